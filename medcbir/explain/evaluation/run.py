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

from medcbir.engine import Engine
from medcbir.errors import ConfigError
from medcbir.explain import metrics as M
from medcbir.explain.evaluation.scoring import (
    embed_targets,
    finite_mean,
    heatmaps_for,
    map_function,
    margins,
    method_options,
    not_applicable,
    run_as_method,
    score_heatmaps,
    torch_module,
)
from medcbir.explain.evaluation.selection import decode_with_masks, select_items, select_pairs
from medcbir.explain.runner import check_method_runs_on, method_function, torch_encoder
from medcbir.explain.sanity import parametrised_layers, randomise, sanity_checks
from medcbir.explain.trivial_maps import TRIVIAL_MAPS
from medcbir.imaging.labels import read_labels

TARGETS = ("own", "query")


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
    module = torch_module(encoder)
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
        targets = embed_targets(module, target_images)
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
            opts = method_options(name, seed, n_masks, options)
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
            if not parametrised_layers(module):
                raise ConfigError("--sanity randomises the encoder's weights: it needs a torch encoder with parameters (pass the checkpoint with --encoder)")
            result["sanity"] = {}
            # one set of randomised encoders for every map: the maps differ, the encoders do not
            randomised = randomise(module, images, seed=seed, data_steps=sanity_steps)
            for name in list(methods) + list(trivial):
                if progress:
                    progress(f"{name} (sanity)")
                result["sanity"][name] = sanity_checks(
                    map_function(name) if name in TRIVIAL_MAPS else run_as_method(name), module, images, target_images,
                    randomised=randomised, options=method_options(name, seed, n_masks, options),
                )
        return result
    finally:
        module.train(was_training)


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
    module = torch_module(encoder)
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
        targets = embed_targets(module, target_images)
        rows = {}
        for name in list(methods) + list(trivial):
            heat = heatmaps_for(name, module, images, targets, method_options(name, seed, n_masks, options)).numpy()
            rows[name] = {
                "rank_accuracy": finite_mean([M.relevance_rank_accuracy(h, m) for h, m in zip(heat, masks)]),
                "mass_accuracy": finite_mean([M.relevance_mass_accuracy(h, m) for h, m in zip(heat, masks)]),
            }
    finally:
        module.train(was_training)
    trivial_rows = {t: rows[t] for t in trivial}
    out = {}
    for name in methods:
        margin, best = margins(rows[name], trivial_rows, keys=("rank_accuracy", "mass_accuracy"))
        out[name] = {**rows[name], "margin": margin, "best_trivial": best}
    return {"targets": "own" if targets is None else "query", "n": len(images), "methods": out, "trivial": trivial_rows}


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
