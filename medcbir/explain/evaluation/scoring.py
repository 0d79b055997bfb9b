"""Scoring maps: every metric of a map family against organ masks, n/a rules, margins over trivial maps.

A method's *margin* is its score minus the best trivial map's (``method − best`` for ↑ metrics,
``best − method`` for ↓ metrics), so positive = better than every trivial map. A perturbation
metric on which every scored map lands within :data:`DEGENERATE_SPREAD` of the others cannot
rank them and is reported not applicable with the reason, as is PIC with own-embedding targets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError
from medcbir.explain import metrics as M
from medcbir.explain.base import capture_features
from medcbir.explain.runner import method_function, run_method, torch_encoder
from medcbir.explain.trivial_maps import TRIVIAL_MAPS

# column order of the printed table: (key, header, better)
COLUMNS = (
    ("rank_accuracy", "RRA↑", "high"),
    ("mass_accuracy", "RMA↑", "high"),
    ("pointing_game", "PG↑", "high"),
    ("pointwise", "PL↑", "high"),
    ("auprc", "AUPRC↑", "high"),
    ("deletion_auc", "Del↓", "low"),
    ("insertion_auc", "Ins↑", "high"),
    ("adc", "ADC↓", "low"),
    ("pic", "PIC↑", "high"),
    ("dice_rotation", "Dice-rot↑", "high"),
    ("silhouette", "S↑", "high"),
    ("compactness", "D_C↓", "low"),
    ("uniqueness", "D_U↑", "high"),
    ("seconds_per_image", "s/img", "low"),
)
BETTER = {key: better for key, _, better in COLUMNS}
HEADERS = {key: header for key, header, _ in COLUMNS}
# metrics a method is compared with the trivial maps on (time is not a quality)
QUALITY_KEYS = tuple(key for key, _, _ in COLUMNS if key != "seconds_per_image")
# perturbation metrics and the spread (over every scored map) below which they cannot rank maps
DEGENERATE_SPREAD = {"deletion_auc": 0.01, "insertion_auc": 0.01, "adc": 1.0, "pic": 1e-9}
OWN_TARGET_REASONS = {
    "pic": "own-embedding targets: the unmasked similarity is already 1, so no map can increase it",
}



def finite_mean(values) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def embed_targets(module, target_images: torch.Tensor | None) -> torch.Tensor | None:
    if target_images is None:
        return None
    with torch.no_grad():
        return F.normalize(module(target_images).float(), dim=1)


def map_function(name: str):
    """The callable behind a method name or a trivial map name."""
    if name in TRIVIAL_MAPS:
        return TRIVIAL_MAPS[name]
    return method_function(name)


def heatmaps_for(name: str, module, images: torch.Tensor, targets: torch.Tensor | None, options: dict) -> torch.Tensor:
    """B×H×W maps of a method or trivial map; ``targets=None`` explains each image's own embedding."""
    if name in TRIVIAL_MAPS:
        return TRIVIAL_MAPS[name](module, images, targets, **options).detach().float()
    own = targets is None
    if own:
        with torch.no_grad():
            targets = F.normalize(module(images).float(), dim=1)
    flags = torch.full((len(images),), own, dtype=torch.bool)
    heat, _ = run_method(name, module, images, targets, flags, **options)
    return heat.detach().float()


def score_heatmaps(name: str, module, images: torch.Tensor, heat: torch.Tensor, masks, targets: torch.Tensor | None, angles=(), options: dict | None = None) -> dict:
    """Every metric of one map family on a batch (means, plus ``per_image`` lists).

    Args:
        name: method or trivial-map name (re-run on rotated images for the Dice sweep).
        module: the torch encoder.
        images: B×C×H×W.
        heat: B×H×W maps of ``images``.
        masks: B H×W boolean organ masks.
        targets: B×D target embeddings, ``None`` = own embeddings.
        angles: rotation angles of the Dice sweep (empty = skip).
        options: the method's options.
    """
    options = options or {}
    fn = map_function(name)
    per = {key: [] for key in ("rank_accuracy", "mass_accuracy", "pointing_game", "pointwise", "auprc", "deletion_auc", "insertion_auc", "dice_rotation")}
    for i, mask in enumerate(masks):
        h = heat[i].numpy()
        t = None if targets is None else targets[i]
        per["rank_accuracy"].append(M.relevance_rank_accuracy(h, mask))
        per["mass_accuracy"].append(M.relevance_mass_accuracy(h, mask))
        per["pointing_game"].append(M.pointing_game(h, mask))
        per["pointwise"].append(M.pointwise_localisation(h, mask))
        per["auprc"].append(M.localisation_auprc(h, mask))
        per["deletion_auc"].append(M.deletion_auc(module, images[i], h, target=t))
        per["insertion_auc"].append(M.insertion_auc(module, images[i], h, target=t))
        if angles:
            per["dice_rotation"].append(M.dice_rotation_sweep(fn, module, images[i], mask, angles=angles, targets=t, **options)["mean"])
    out = {key: finite_mean(vals) for key, vals in per.items()}
    out.update({k: v for k, v in M.average_drop_increase(module, images, heat, targets).items() if k in ("adc", "pic")})
    if getattr(module, "feature_layer", None) is not None and len(images) > 1:
        _, feats = capture_features(module, images)
        try:
            out.update({k: v for k, v in M.landmark_scores(heat, feats, n_landmarks=5, n_clusters=3).items() if k != "n_landmarks"})
        except ConfigError:
            pass
    out["per_image"] = per
    return out


def not_applicable(rows: dict[str, dict], targets: str) -> dict[str, str]:
    """Metrics that cannot rank these maps, with the reason (see the module docstring)."""
    reasons = dict(OWN_TARGET_REASONS) if targets == "own" else {}
    for key, tolerance in DEGENERATE_SPREAD.items():
        if key in reasons:
            continue
        values = [r[key] for r in rows.values() if r.get(key) is not None and np.isfinite(r[key])]
        if len(values) > 1 and max(values) - min(values) < tolerance:
            reasons[key] = (
                f"every map (methods and trivial baselines) scores {min(values):.3g}..{max(values):.3g}: "
                "the similarity to the target barely moves under this perturbation"
            )
    return reasons


def margins(method_row: dict, trivial_rows: dict[str, dict], keys=QUALITY_KEYS) -> tuple[dict, dict]:
    """(margin per metric, best trivial map's name per metric); positive margin = better."""
    margin, best_name = {}, {}
    for key in keys:
        value = method_row.get(key)
        pool = {n: r[key] for n, r in trivial_rows.items() if r.get(key) is not None and np.isfinite(r[key])}
        if value is None or not np.isfinite(value) or not pool:
            margin[key], best_name[key] = None, None
            continue
        if BETTER[key] == "high":
            best_name[key] = max(pool, key=pool.get)
            margin[key] = float(value - pool[best_name[key]])
        else:
            best_name[key] = min(pool, key=pool.get)
            margin[key] = float(pool[best_name[key]] - value)
    return margin, best_name


def method_options(name: str, seed: int, n_masks: int, options: dict | None) -> dict:
    if options and name in options:
        return dict(options[name])
    if name == "relax":
        return {"n_masks": n_masks, "seed": seed}
    if name in ("smoothgrad", "smoothgrad_ig", "noise"):
        return {"seed": seed}
    return {}


def run_as_method(name: str):
    # the runner's own-target handling (gradient methods need None for own rows), as a method
    def run(module, images, targets, **options):
        return heatmaps_for(name, module, images, targets, options)

    return run


def torch_module(encoder):
    # an Engine carries its encoder; an engine Encoder wraps a torch module (or an ONNX session)
    if hasattr(encoder, "search") and hasattr(encoder, "encoder"):
        encoder = encoder.encoder
    return torch_encoder(encoder)
