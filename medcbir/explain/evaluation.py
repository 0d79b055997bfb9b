"""Scoring explanation methods against organ masks (``medcbir explain-eval``).

A score says something only if it can tell methods apart, so every method is scored

- **against a meaningful target**. ``targets="query"`` (the default) pairs each query item with
  its nearest neighbour (another patient's by default) that also has the organ mask; the
  neighbour's map explains its similarity to the query, and deletion/insertion and ADC/PIC perturb
  that similarity (with ``pairwise`` the query is also explained w.r.t. each neighbour).
  ``targets="own"`` explains each image w.r.t. its own embedding: its unperturbed similarity is
  1, so nothing can raise it and PIC is *not applicable* (reported ``None``/``n/a`` with the
  reason, never as a number); a perturbation metric on which every map, methods and trivial
  baselines alike, lands within a hair of the others is not applicable either.
- **beside trivial maps** (:mod:`medcbir.explain.trivial_maps`: noise, centre, intensity, edges),
  scored by the same code; each method gets its *margin over the best trivial map* per metric,
  positive = better than every trivial map (``method − best`` for ↑ metrics, ``best − method``
  for ↓ metrics).
- optionally **through sanity checks** (:mod:`medcbir.explain.sanity`, Adebayo et al. 2018).

Items come from an index and a ``masks.h5`` (``/<sop_instance_uid>/<organ>``, as the phantom
writes); :func:`evaluate_explanations` is the index-free core, :func:`relevance_rank_and_margin`
the cheap localisation-only variant for quality benchmarks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError
from medcbir.explain import metrics as M
from medcbir.explain.runner import check_method_runs_on, method_function, run_method, torch_encoder
from medcbir.explain.trivial_maps import TRIVIAL_MAPS
from medcbir.imaging.labels import read_labels

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
TARGETS = ("own", "query")


def select_items(engine, masks_file, organ: str, n: int, labels: dict[tuple[str, int], str] | None = None) -> list[tuple[int, np.ndarray]]:
    """Up to ``n`` (item id, organ mask) pairs spread over the index (round-robin over the
    ``{(sop_instance_uid, frame): label}`` of ``labels``, :meth:`medcbir.imaging.labels.Labels.by_item`)."""
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
                groups.setdefault(labels.get((uids[r], int(frames[r])), "?"), []).append(r)
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


def mask_like(preprocessing, item, mask: np.ndarray) -> np.ndarray:
    """``mask`` (at the item's pixel grid) through the same geometry as the item's image.

    The body crop (``crop="body"``, the default) cuts each image by its own foreground box
    (:meth:`~medcbir.imaging.Preprocessing.region`); a mask resized without that crop would be
    scored against pixels it does not cover.
    """
    from medcbir.imaging import resize_keep_aspect
    from medcbir.imaging.foreground import extract

    mask = np.asarray(mask, dtype=np.float32)
    if preprocessing.crop == "none":
        return resize_keep_aspect(mask, preprocessing.size, fill=0.0) > 0.5
    return extract(mask, preprocessing.region(item), preprocessing.size, 0.0) > 0.5


def decode_with_masks(engine, ids, masks) -> tuple[list[dict], torch.Tensor, list[np.ndarray]]:
    """(metas, B×C×S×S preprocessed images, masks in the images' geometry) of indexed items."""
    from medcbir.explain.runner import decode_item

    prep = engine.encoder.preprocessing
    metas = engine.meta(list(ids))
    items = [decode_item(m, engine.pseudonym_key) for m in metas]
    images = torch.from_numpy(np.stack([prep.apply(it) for it in items]))
    return metas, images, [mask_like(prep, it, m) for it, m in zip(items, masks)]


def _mean(values) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _embed_targets(module, target_images: torch.Tensor | None) -> torch.Tensor | None:
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
    out = {key: _mean(vals) for key, vals in per.items()}
    out.update({k: v for k, v in M.average_drop_increase(module, images, heat, targets).items() if k in ("adc", "pic")})
    if getattr(module, "feature_layer", None) is not None and len(images) > 1:
        from medcbir.explain.base import capture_features

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


def _options(name: str, seed: int, n_masks: int, options: dict | None) -> dict:
    if options and name in options:
        return dict(options[name])
    if name == "relax":
        return {"n_masks": n_masks, "seed": seed}
    if name in ("smoothgrad", "smoothgrad_ig", "noise"):
        return {"seed": seed}
    return {}


def evaluate_explanations(
    encoder,
    images,
    masks,
    target_images=None,
    methods=("relax", "gradcam"),
    trivial=tuple(TRIVIAL_MAPS),
    angles=(),
    n_masks: int = 1000,
    seed: int = 0,
    options: dict | None = None,
    sanity: bool = False,
    sanity_steps: int = 30,
    progress=None,
) -> dict:
    """Score methods and trivial maps on images with organ masks (the index-free core).

    Args:
        encoder: an ``nn.Module``, an engine ``Encoder`` or an ``Engine`` (its encoder is used).
        images: B×C×H×W images to explain (tensor or array).
        masks: B H×W organ masks at the images' resolution.
        target_images: B×C×H×W images whose embeddings are the targets (row i explains why
            ``images[i]`` matches ``target_images[i]``); ``None`` = own-embedding targets.
        methods: names of :data:`medcbir.explain.METHODS`.
        trivial: names of :data:`medcbir.explain.trivial_maps.TRIVIAL_MAPS` to score beside them.
        angles: rotation angles of the Dice sweep (empty = skip; it re-runs every map).
        n_masks: RELAX masks (unless ``options`` says otherwise).
        seed: RELAX / SmoothGrad / noise-map / sanity seed.
        options: per-name option dicts overriding the defaults (e.g. ``{"occlusion": {"window": 8}}``).
        sanity: also run :func:`medcbir.explain.sanity.sanity_checks` for every map.
        sanity_steps: training steps of the data-randomised encoder.
        progress: optional callable(str) told when each map starts.

    Returns:
        ``{"n", "targets", "target_similarity", "angles", "methods": {name: {metric: mean | None,
        "margin": {metric: float | None}, "best_trivial": {metric: name}, "per_image": {...}}},
        "trivial": {name: {metric: mean | None, ...}}, "not_applicable": {metric: reason},
        "sanity": {name: {...}} (with ``sanity``)}``.
    """
    module = _module(encoder)
    images = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not isinstance(images, torch.Tensor) else images.float()
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if len(masks) != len(images):
        raise ConfigError(f"{len(images)} images but {len(masks)} masks")
    if target_images is not None:
        target_images = torch.as_tensor(np.asarray(target_images, dtype=np.float32)) if not isinstance(target_images, torch.Tensor) else target_images.float()
        if target_images.shape != images.shape:
            raise ConfigError(f"target_images {tuple(target_images.shape)} must match images {tuple(images.shape)}")
    for m in methods:
        method_function(m)
        check_method_runs_on(m, module)
    unknown = [t for t in trivial if t not in TRIVIAL_MAPS]
    if unknown:
        raise ConfigError(f"unknown trivial map {unknown[0]!r}; choose from {', '.join(TRIVIAL_MAPS)}")
    was_training = module.training
    module.eval()
    try:
        targets = _embed_targets(module, target_images)
        kind = "own" if targets is None else "query"
        similarity = 1.0
        if targets is not None:
            with torch.no_grad():
                similarity = float(F.cosine_similarity(F.normalize(module(images).float(), dim=1), targets, dim=1).mean())
        rows: dict[str, dict] = {}
        maps: dict[str, torch.Tensor] = {}
        for name in list(methods) + list(trivial):
            if progress:
                progress(name)
            opts = _options(name, seed, n_masks, options)
            t0 = time.perf_counter()
            maps[name] = heatmaps_for(name, module, images, targets, opts)
            seconds = time.perf_counter() - t0
            rows[name] = score_heatmaps(name, module, images, maps[name], masks, targets, angles, opts)
            rows[name]["seconds_per_image"] = seconds / len(images)
        na = not_applicable(rows, kind)
        for row in rows.values():
            for key in na:
                if key in row:
                    row[key] = None
        trivial_rows = {t: rows[t] for t in trivial}
        out_methods = {}
        for name in methods:
            margin, best = margins(rows[name], trivial_rows)
            out_methods[name] = {**rows[name], "margin": margin, "best_trivial": best}
        result = {
            "n": len(images),
            "targets": kind,
            "target_similarity": similarity,
            "angles": list(angles),
            "methods": out_methods,
            "trivial": trivial_rows,
            "not_applicable": na,
        }
        if sanity:
            from medcbir.explain.sanity import parametrised_layers, randomise, sanity_checks

            if not parametrised_layers(module):
                raise ConfigError("--sanity randomises the encoder's weights: it needs a torch encoder with parameters (pass the checkpoint with --encoder)")
            result["sanity"] = {}
            # one set of randomised encoders for every map: the maps differ, the encoders do not
            randomised = randomise(module, images, seed=seed, data_steps=sanity_steps)
            for name in list(methods) + list(trivial):
                if progress:
                    progress(f"{name} (sanity)")
                result["sanity"][name] = sanity_checks(
                    map_function(name) if name in TRIVIAL_MAPS else _run_as_method(name), module, images, target_images,
                    randomised=randomised, options=_options(name, seed, n_masks, options),
                )
        return result
    finally:
        module.train(was_training)


def _run_as_method(name: str):
    # the runner's own-target handling (gradient methods need None for own rows), as a method
    def run(module, images, targets, **options):
        return heatmaps_for(name, module, images, targets, options)

    return run


def _module(encoder):
    # an Engine carries its encoder; an engine Encoder wraps a torch module (or an ONNX session)
    if hasattr(encoder, "search") and hasattr(encoder, "encoder"):
        encoder = encoder.encoder
    return torch_encoder(encoder)


def relevance_rank_and_margin(
    encoder,
    images,
    masks,
    target_images=None,
    methods=("relax",),
    trivial=tuple(TRIVIAL_MAPS),
    n_masks: int = 1000,
    seed: int = 0,
    options: dict | None = None,
) -> dict:
    """Relevance rank/mass accuracy of each method and its margin over the best trivial map.

    The cheap, localisation-only part of :func:`evaluate_explanations` (no perturbation
    metrics), for quality benchmarks that compare encoders (e.g. trained vs ``random``).

    Args:
        encoder: an ``nn.Module``, an engine ``Encoder`` or an ``Engine``.
        images: B×C×H×W images.
        masks: B H×W organ/lesion masks at the images' resolution.
        target_images: images whose embeddings are the targets (``None`` = own embeddings).
        methods: method names; trivial: trivial-map names.
        n_masks, seed, options: as in :func:`evaluate_explanations`.

    Returns:
        ``{"targets": "own"|"query", "n", "methods": {name: {"rank_accuracy", "mass_accuracy",
        "margin": {...}, "best_trivial": {...}}}, "trivial": {name: {"rank_accuracy",
        "mass_accuracy"}}}``.
    """
    module = _module(encoder)
    images = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not isinstance(images, torch.Tensor) else images.float()
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if len(masks) != len(images):
        raise ConfigError(f"{len(images)} images but {len(masks)} masks")
    if target_images is not None and not isinstance(target_images, torch.Tensor):
        target_images = torch.as_tensor(np.asarray(target_images, dtype=np.float32))
    for m in methods:
        method_function(m)
        check_method_runs_on(m, module)
    was_training = module.training
    module.eval()
    try:
        targets = _embed_targets(module, target_images)
        rows = {}
        for name in list(methods) + list(trivial):
            heat = heatmaps_for(name, module, images, targets, _options(name, seed, n_masks, options)).numpy()
            rows[name] = {
                "rank_accuracy": _mean([M.relevance_rank_accuracy(h, m) for h, m in zip(heat, masks)]),
                "mass_accuracy": _mean([M.relevance_mass_accuracy(h, m) for h, m in zip(heat, masks)]),
            }
    finally:
        module.train(was_training)
    trivial_rows = {t: rows[t] for t in trivial}
    out = {}
    for name in methods:
        margin, best = margins(rows[name], trivial_rows, keys=("rank_accuracy", "mass_accuracy"))
        out[name] = {**rows[name], "margin": margin, "best_trivial": best}
    return {"targets": "own" if targets is None else "query", "n": len(images), "methods": out, "trivial": trivial_rows}


def _organ_mask(fh, uid: str, organ: str) -> np.ndarray | None:
    if uid not in fh or organ not in fh[uid]:
        return None
    mask = np.asarray(fh[uid][organ]) > 0
    return mask if mask.any() else None


def select_pairs(engine, masks_file, organ: str, queries: list[tuple[int, np.ndarray]], n: int, exclude: str = "same-patient", k: int = 20) -> list[tuple[int, np.ndarray, int, np.ndarray]]:
    """Up to ``n`` (query id, query mask, neighbour id, neighbour mask) pairs.

    Each query's neighbour is its best-ranked search result (under ``exclude``) that is not the
    query itself and has a non-empty organ mask; queries without one in the top ``k`` are skipped.
    """
    import h5py

    pairs = []
    with h5py.File(masks_file, "r") as fh:
        for qid, qmask in queries:
            meta = engine.meta([qid])[0]
            [neighbours] = engine.search([f"{meta['sop_instance_uid']}:{int(meta.get('frame', 0) or 0)}"], k=k, exclude=exclude)
            for nb in neighbours:
                if nb.id == qid:
                    continue
                nmask = _organ_mask(fh, str(nb.meta.get("sop_instance_uid", "")), organ)
                if nmask is not None:
                    pairs.append((qid, qmask, int(nb.id), nmask))
                    break
            if len(pairs) == n:
                break
    if not pairs:
        raise ConfigError(f"no query has a neighbour with a non-empty {organ!r} mask among its top {k} (exclude {exclude})")
    return pairs


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
    targets: str = "query",
    pairwise: bool = False,
    exclude: str = "same-patient",
    sanity: bool = False,
    sanity_steps: int = 30,
    trivial=tuple(TRIVIAL_MAPS),
    options: dict | None = None,
) -> dict:
    """Score explanation methods (and trivial maps) on an index's items against their organ masks.

    Args:
        index_dir: the index folder.
        masks_file: ``masks.h5`` with ``/<sop_instance_uid>/<organ>`` datasets.
        organ: the organ mask to score against.
        methods: method names (:data:`medcbir.explain.METHODS`).
        n: number of images (own targets) or of query–neighbour pairs (query targets).
        labels: optional ``labels.csv``: spread the images over its labels (anatomical levels).
        encoder: an encoder with the index's fingerprint (None = the index's).
        angles: rotation angles of the Dice sweep (empty = skip it; it re-runs every method).
        n_masks: RELAX masks.
        seed: RELAX / SmoothGrad / noise / sanity seed.
        progress: optional callable(str) told when each method starts.
        targets: ``"query"`` (each neighbour explained w.r.t. its query's embedding) or ``"own"``.
        pairwise: with query targets, also explain each query w.r.t. its neighbour's embedding.
        exclude: the search's exclusion when pairing queries with neighbours.
        sanity: run the randomisation sanity checks too.
        sanity_steps: training steps of the data-randomised encoder.
        trivial: trivial maps scored beside the methods.
        options: per-method option dicts (e.g. ``{"wildcat": {"classes": "liver"}}``), as
            :func:`evaluate_explanations` takes them.

    Returns:
        :func:`evaluate_explanations`' result plus ``organ``, ``items`` (the explained images'
        SOP UIDs), ``pairs`` (``[[query uid, neighbour uid], ...]`` with query targets),
        ``pairwise`` and ``exclude``.
    """
    from medcbir.engine import Engine

    if targets not in TARGETS:
        raise ConfigError(f"targets must be one of {', '.join(TARGETS)}, not {targets!r}")
    if pairwise and targets != "query":
        raise ConfigError("--pairwise explains queries w.r.t. their neighbours: it needs --targets query")
    if not Path(masks_file).is_file():
        raise ConfigError(f"masks file {masks_file} does not exist")
    for m in methods:
        method_function(m)
    engine = Engine.open(index_dir, encoder=encoder)
    module = torch_encoder(engine.encoder)
    for m in methods:
        check_method_runs_on(m, module)
    label_map = read_labels(labels).by_item() if labels else None

    pairs_out = None
    if targets == "own":
        chosen = select_items(engine, masks_file, organ, n, label_map)
        metas, images, masks = decode_with_masks(engine, [i for i, _ in chosen], [m for _, m in chosen])
        target_images = None
    else:
        pool = select_items(engine, masks_file, organ, 3 * n, label_map)
        pairs = select_pairs(engine, masks_file, organ, pool, n, exclude=exclude)
        qmetas, qimages, qmasks = decode_with_masks(engine, [p[0] for p in pairs], [p[1] for p in pairs])
        nmetas, nimages, nmasks = decode_with_masks(engine, [p[2] for p in pairs], [p[3] for p in pairs])
        pairs_out = [[q["sop_instance_uid"], nb["sop_instance_uid"]] for q, nb in zip(qmetas, nmetas)]
        # rows: each neighbour w.r.t. its query, then (pairwise) each query w.r.t. its neighbour
        metas, images, masks, target_images = nmetas, nimages, nmasks, qimages
        if pairwise:
            metas = nmetas + qmetas
            images, target_images = torch.cat([nimages, qimages]), torch.cat([qimages, nimages])
            masks = nmasks + qmasks
    result = evaluate_explanations(
        module, images, masks, target_images, methods=methods, trivial=trivial, angles=angles, n_masks=n_masks, seed=seed,
        options=options, sanity=sanity, sanity_steps=sanity_steps, progress=progress,
    )
    return {
        "organ": organ,
        **result,
        "items": [m["sop_instance_uid"] for m in metas],
        "pairs": pairs_out,
        "pairwise": bool(pairwise),
        "exclude": exclude if targets == "query" else None,
    }


def describe_targets(result: dict) -> str:
    """One line saying which target the maps explain."""
    if result.get("targets") == "own":
        return "targets: own (each image explained w.r.t. its own embedding)"
    what = "each neighbour explained w.r.t. its query's embedding"
    if result.get("pairwise"):
        what += " and each query w.r.t. its neighbour's"
    extra = f"; exclude {result['exclude']}" if result.get("exclude") else ""
    return f"targets: query ({what}{extra}; mean similarity {result.get('target_similarity', float('nan')):.3f})"


def _cell(value, na: bool) -> str:
    if na:
        return f"{'n/a':>9}"
    if value is None or not np.isfinite(value):
        return f"{'-':>9}"
    return f"{value:>9.3f}"


def format_table(result: dict) -> str:
    """The result as fixed-width tables: methods, trivial maps, margins, n/a reasons, sanity."""
    rows = {**result["methods"], **result.get("trivial", {})}
    na = result.get("not_applicable", {})
    cols = [(k, h) for k, h, _ in COLUMNS if any(k in r for r in rows.values())]
    width = max(10, *(len(m) for m in rows))
    head = " ".join([f"{'method':<{width}}"] + [f"{h:>9}" for _, h in cols])
    lines = [f"{result.get('organ', 'mask')}: {result['n']} images, {describe_targets(result)}", head]
    for name, r in result["methods"].items():
        lines.append(" ".join([f"{name:<{width}}"] + [_cell(r.get(k), k in na) for k, _ in cols]))
    if result.get("trivial"):
        lines.append("trivial maps (ignore the encoder):")
        for name, r in result["trivial"].items():
            lines.append(" ".join([f"{name:<{width}}"] + [_cell(r.get(k), k in na) for k, _ in cols]))
        lines.append("margin over the best trivial map (positive = better than every trivial map):")
        mcols = [(k, h) for k, h in cols if k in QUALITY_KEYS]
        for name, r in result["methods"].items():
            lines.append(" ".join([f"{name:<{width}}"] + [_cell(r["margin"].get(k), k in na) for k, _ in mcols]))
    for key, reason in na.items():
        lines.append(f"n/a {HEADERS.get(key, key)}: {reason}")
    if result.get("sanity"):
        lines.append(format_sanity(result["sanity"], width))
    return "\n".join(lines)


def format_sanity(sanity: dict, width: int = 10) -> str:
    """Spearman / SSIM of each map family, real vs randomised encoder (cascade stages, data)."""
    first = next(iter(sanity.values()))
    stages = [p["layers"] for p in first["parameter"]]
    head = [f"{'method':<{width}}"] + [f"{'top ' + str(s):>12}" for s in stages] + [f"{'data':>12}", "  flag"]
    lines = ["sanity checks (Adebayo et al. 2018): Spearman / SSIM between maps of the real and the randomised encoder", " ".join(head)]
    for name, s in sanity.items():
        cells = [f"{p['spearman']:>5.2f} / {p['ssim']:>4.2f}" for p in s["parameter"]]
        cells.append(f"{s['data']['spearman']:>5.2f} / {s['data']['ssim']:>4.2f}" if s.get("data") else f"{'-':>12}")
        lines.append(" ".join([f"{name:<{width}}"] + cells + ["  FLAGGED" if s["flagged"] else "  ok"]))
    return "\n".join(lines)
