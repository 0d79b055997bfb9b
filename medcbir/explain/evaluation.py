"""Scoring explanation methods against organ masks (``medcbir explain-eval``).

Items of an index that have a non-empty mask of the chosen organ in a ``masks.h5``
(``/<sop_instance_uid>/<organ>``, as the phantom writes) are decoded, each method explains each
image w.r.t. its own embedding, and every metric of :mod:`medcbir.explain.metrics` is averaged
over the images — one row per method, as in the reference papers' tables.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from medcbir.errors import ConfigError
from medcbir.explain import metrics as M
from medcbir.explain.runner import check_method_runs_on, decode_item_image, method_function, run_method, torch_encoder

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


def _read_labels(path) -> dict[str, str]:
    import csv

    with open(path, newline="") as fh:
        return {row["sop_instance_uid"]: row["label"] for row in csv.DictReader(fh)}


def select_items(engine, masks_file, organ: str, n: int, labels: dict[str, str] | None = None) -> list[tuple[int, np.ndarray]]:
    """Up to ``n`` (item id, organ mask) pairs spread over the index (round-robin over labels)."""
    import h5py

    uids = np.asarray(engine.columns["sop_instance_uid"]).astype(str)
    frames = np.asarray(engine.columns["frame"])
    live = np.nonzero(engine.live[engine.ids] if len(engine.live) else np.zeros(0, bool))[0]
    with h5py.File(masks_file, "r") as fh:
        organs = {name for uid in list(fh.keys())[:1] for name in fh[uid].keys()}
        if organs and organ not in organs:
            raise ConfigError(f"organ {organ!r} is not in {masks_file}; it has {', '.join(sorted(organs))}")
        rows = [r for r in live if frames[r] == 0 and uids[r] in fh and organ in fh[uids[r]]]
        if labels:
            groups: dict[str, list[int]] = {}
            for r in rows:
                groups.setdefault(labels.get(uids[r], "?"), []).append(r)
            queues = [g[len(g) // 2 :] + g[: len(g) // 2][::-1] for g in groups.values()]  # centre first
            order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
        else:
            step = max(1, len(rows) // max(1, n))
            order = rows[::step] + [r for i, r in enumerate(rows) if i % step]
        chosen = []
        for r in order:
            mask = np.asarray(fh[uids[r]][organ]) > 0
            if mask.any():
                chosen.append((int(engine.ids[r]), mask))
            if len(chosen) == n:
                break
    if not chosen:
        raise ConfigError(f"no indexed item has a non-empty {organ!r} mask in {masks_file}")
    return chosen


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    from medcbir.imaging import resize_keep_aspect

    # the same geometry as Preprocessing.resize (aspect kept, centred), padded with background
    return resize_keep_aspect(mask.astype(np.float32), size, fill=0.0) > 0.5


def _mean(values) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def score_method(method: str, module, images: torch.Tensor, masks: list[np.ndarray], angles, options: dict) -> dict:
    """All metrics of one method on a batch of images with their organ masks."""
    own = torch.ones(len(images), dtype=torch.bool)
    t0 = time.perf_counter()
    with torch.no_grad():
        targets = torch.nn.functional.normalize(module(images).float(), dim=1)
    heat, _ = run_method(method, module, images, targets, own, **options)
    seconds = time.perf_counter() - t0
    heat = heat.detach().float()
    per = {key: [] for key in ("rank_accuracy", "mass_accuracy", "pointing_game", "pointwise", "auprc", "deletion_auc", "insertion_auc", "dice_rotation")}
    fn = method_function(method)
    for i, mask in enumerate(masks):
        h = heat[i].numpy()
        per["rank_accuracy"].append(M.relevance_rank_accuracy(h, mask))
        per["mass_accuracy"].append(M.relevance_mass_accuracy(h, mask))
        per["pointing_game"].append(M.pointing_game(h, mask))
        per["pointwise"].append(M.pointwise_localisation(h, mask))
        per["auprc"].append(M.localisation_auprc(h, mask))
        per["deletion_auc"].append(M.deletion_auc(module, images[i], h))
        per["insertion_auc"].append(M.insertion_auc(module, images[i], h))
        if angles:
            per["dice_rotation"].append(M.dice_rotation_sweep(fn, module, images[i], mask, angles=angles, **options)["mean"])
    out = {key: _mean(vals) for key, vals in per.items()}
    out.update({k: v for k, v in M.average_drop_increase(module, images, heat).items() if k in ("adc", "pic")})
    if getattr(module, "feature_layer", None) is not None and len(images) > 1:
        from medcbir.explain.base import capture_features

        _, feats = capture_features(module, images)
        try:
            out.update({k: v for k, v in M.landmark_scores(heat, feats, n_landmarks=5, n_clusters=3).items() if k != "n_landmarks"})
        except ConfigError:
            pass
    out["seconds_per_image"] = seconds / len(images)
    out["per_image"] = per
    return out


def evaluate_methods(
    index_dir,
    masks_file,
    organ: str = "liver",
    methods=("relax", "gradcam"),
    n: int = 8,
    labels=None,
    encoder=None,
    angles=(0, 90, 180, 270),
    n_masks: int = 1000,
    seed: int = 0,
    progress=None,
) -> dict:
    """Score explanation methods on an index's items against their organ masks.

    Args:
        index_dir: the index folder.
        masks_file: ``masks.h5`` with ``/<sop_instance_uid>/<organ>`` datasets.
        organ: the organ mask to score against.
        methods: method names (:data:`medcbir.explain.METHODS`).
        n: number of images.
        labels: optional ``labels.csv``: spread the images over its labels (anatomical levels).
        encoder: an encoder with the index's fingerprint (None = the index's).
        angles: rotation angles of the Dice sweep (empty = skip it; it re-runs every method).
        n_masks: RELAX masks.
        seed: RELAX / SmoothGrad seed.
        progress: optional callable(str) told when each method starts.

    Returns:
        ``{"organ", "n", "items", "methods": {name: {metric: mean, ..., "per_image": {...}}}}``.
    """
    from medcbir.engine import Engine

    if not Path(masks_file).is_file():
        raise ConfigError(f"masks file {masks_file} does not exist")
    for m in methods:
        method_function(m)
    engine = Engine.open(index_dir, encoder=encoder)
    module = torch_encoder(engine.encoder)
    for m in methods:
        check_method_runs_on(m, module)
    chosen = select_items(engine, masks_file, organ, n, _read_labels(labels) if labels else None)
    ids = [i for i, _ in chosen]
    metas = engine.meta(ids)
    prep = engine.encoder.preprocessing
    images = torch.from_numpy(np.stack([decode_item_image(m, prep, engine.pseudonym_key) for m in metas]))
    masks = [_resize_mask(mask, prep.size) for _, mask in chosen]
    result = {"organ": organ, "n": len(ids), "items": [m["sop_instance_uid"] for m in metas], "angles": list(angles), "methods": {}}
    for m in methods:
        if progress:
            progress(m)
        options = {"n_masks": n_masks, "seed": seed} if m == "relax" else ({"seed": seed} if m == "smoothgrad" else {})
        result["methods"][m] = score_method(m, module, images, masks, angles, options)
    return result


def format_table(result: dict) -> str:
    """The result as a fixed-width table: one row per method, one column per metric."""
    cols = [(k, h) for k, h, _ in COLUMNS if any(k in r for r in result["methods"].values())]
    width = max(8, *(len(m) for m in result["methods"]))
    lines = [f"{result['organ']}: {result['n']} images, own-embedding targets", " ".join([f"{'method':<{width}}"] + [f"{h:>9}" for _, h in cols])]
    for name, r in result["methods"].items():
        cells = [f"{r[k]:>9.3f}" if k in r and np.isfinite(r[k]) else f"{'-':>9}" for k, _ in cols]
        lines.append(" ".join([f"{name:<{width}}"] + cells))
    return "\n".join(lines)
