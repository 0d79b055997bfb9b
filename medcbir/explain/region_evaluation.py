"""Scoring region-match explanations on lesion masks (``medcbir explain-eval --roi-boxes``).

Every row of a boxes CSV (``sop_instance_uid,frame,x,y,w,h[,label]``, as phantom v3's
``lesion-boxes.csv``) is a region query. Its top-K region neighbours are explained
(:mod:`medcbir.explain.regions`), and each neighbour whose *matched region holds a lesion* is
scored: the ground truth is every pixel of the lesions the matched box holds (overlapping it by at
least a quarter of the smaller of the two; masks.h5 ``/<sop_instance_uid>/lesion-id``, phantom v3);
a neighbour whose matched region holds none has no ground truth and is counted, not scored.

Maps are scored with the localisation metrics of ``explain-eval`` (relevance rank accuracy RRA,
relevance mass accuracy RMA, pointing game PG, localisation AUPRC; :mod:`medcbir.explain.metrics`)
beside **trivial region maps** that ignore the query and the descriptor, on the same support
(the neighbourhood the descriptor reads, zero outside):

    centre     a Gaussian centred on the matched box (σ = half its sides): "the box's middle";
    intensity  the frame in the neighbourhood, scaled to (0, 1]: "bright things matter";
    edges      its Sobel gradient magnitude: "contours matter";
    noise      uniform random values (seeded): chance.

The same maps are also scored for **faithfulness** to the match score, with no mask needed:
deletion and insertion areas (:mod:`medcbir.explain.region_faithfulness`: the map's top pixels
take the local background, or are restored from it, and the region is described and scored again).

Each method's margin over the best trivial map per metric comes from
:func:`medcbir.explain.evaluation.scoring.margins` (positive = better than every trivial map).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medcbir.engine import Engine
from medcbir.engine.region_search import RegionIndex, resolve_region_query
from medcbir.errors import ConfigError, DecodeError
from medcbir.explain import metrics as M
from medcbir.explain import region_faithfulness
from medcbir.explain.evaluation.scoring import HEADERS, margins
from medcbir.explain.regions import REGION_METHODS, MatchScore, check_region_method, neighbourhoods, region_match_maps

#: Localisation metrics scored on region maps: (key, function).
REGION_METRICS = (
    ("rank_accuracy", M.relevance_rank_accuracy),
    ("mass_accuracy", M.relevance_mass_accuracy),
    ("pointing_game", M.pointing_game),
    ("auprc", M.localisation_auprc),
)
#: Localisation keys, then the faithfulness keys (deletion ↓, insertion ↑).
REGION_KEYS = tuple(key for key, _ in REGION_METRICS) + region_faithfulness.KEYS
TRIVIAL_REGION_MAPS = ("centre", "intensity", "edges", "noise")
BOX_COLUMNS = ("sop_instance_uid", "x", "y", "w", "h")
#: A matched box holds a lesion when their overlap is at least this share of the smaller.
HELD = 0.25


def read_boxes(path) -> list[dict]:
    """Rows of a boxes CSV: ``{"sop_instance_uid", "frame", "box": (x, y, w, h), "label"}``.

    Raises:
        ConfigError: missing file or column, or a row whose numbers do not parse (named by line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--roi-boxes {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"--roi-boxes {path} lacks column(s) {', '.join(missing)} (it needs sop_instance_uid,frame,x,y,w,h[,label])")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                box = tuple(int(round(float(row[c]))) for c in "xywh")
                frame = int(row.get("frame") or 0)
            except (TypeError, ValueError):
                raise ConfigError(f"--roi-boxes {path} line {line}: x, y, w, h and frame must be numbers") from None
            rows.append({"sop_instance_uid": str(row["sop_instance_uid"]).strip(), "frame": frame, "box": box, "label": row.get("label") or ""})
    if not rows:
        raise ConfigError(f"--roi-boxes {path} has no rows")
    return rows


def spread(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` rows taking the labels in turn (file order within a label): every kind is queried."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    queues = list(groups.values())
    order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return order[:n]


def lesion_truth(fh, uid: str, box, overlap: float = None) -> np.ndarray | None:
    """Pixels of the lesions a matched box holds (masks.h5 ``lesion-id`` of item ``uid``), or None.

    A lesion is held when the part of it inside the box is at least ``overlap`` (default
    :data:`HELD`) of the smaller of the two, the box or the lesion: a box on a lesion's core, a
    box around a small lesion, not a box that grazes a lesion's edge.
    """
    if uid not in fh or "lesion-id" not in fh[uid]:
        return None
    overlap = HELD if overlap is None else overlap
    ids = np.asarray(fh[uid]["lesion-id"])
    x, y, w, h = (int(v) for v in box)
    inside = ids[y:y + h, x:x + w]
    held = []
    for number in np.unique(inside[inside > 0]):
        common = int(np.count_nonzero(inside == number))
        if common >= overlap * min(w * h, int(np.count_nonzero(ids == number))):
            held.append(number)
    return np.isin(ids, held) if held else None


def trivial_region_map(name: str, frame: np.ndarray, box, window, seed: int = 0) -> np.ndarray:
    """One of :data:`TRIVIAL_REGION_MAPS` over a frame (float32, zero outside ``window``)."""
    rows, cols = frame.shape
    x, y, w, h = (float(v) for v in box)
    wx, wy, ww, wh = (int(v) for v in window)
    inside = (slice(wy, wy + wh), slice(wx, wx + ww))
    out = np.zeros((rows, cols), dtype=np.float32)
    if name == "centre":
        yy = (np.arange(wy, wy + wh) + 0.5 - (y + h / 2)) / max(h / 2, 0.5)
        xx = (np.arange(wx, wx + ww) + 0.5 - (x + w / 2)) / max(w / 2, 0.5)
        out[inside] = np.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2))
    elif name in ("intensity", "edges"):
        part = np.asarray(frame[inside], dtype=np.float64)
        if name == "edges":
            part = np.hypot(ndimage.sobel(part, axis=0, mode="nearest"), ndimage.sobel(part, axis=1, mode="nearest"))
        lo, hi = float(part.min()), float(part.max())
        out[inside] = 0.01 + 0.99 * (part - lo) / (hi - lo) if hi > lo else 1.0
    elif name == "noise":
        out[inside] = np.random.default_rng(seed).random((wh, ww)) + 1e-6
    else:
        raise ConfigError(f"unknown trivial region map {name!r}; choose from {', '.join(TRIVIAL_REGION_MAPS)}")
    return out


def score_map(heat: np.ndarray, truth: np.ndarray) -> dict:
    return {key: float(fn(heat, truth)) for key, fn in REGION_METRICS}


def _score_into(scores: dict, heat: np.ndarray, truth: np.ndarray, hood, score) -> None:
    """Append a map's localisation (on ``truth``) and faithfulness (on the match score) to ``scores``."""
    for key, value in score_map(heat, truth).items():
        scores[key].append(value)
    for key, value in region_faithfulness.faithfulness(hood, score, hood.from_stored(heat)).items():
        scores[key].append(value)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def evaluate_region_explanations(engine, boxes, masks_file, methods=REGION_METHODS, *, n: int = 24, k: int = 5, exclude: str = "same-patient",
                                 n_masks: int | None = None, seed: int = 0, trivial=TRIVIAL_REGION_MAPS, progress=None) -> dict:
    """Explain the region matches of box queries and score the maps on the neighbours' lesion masks.

    Args:
        engine: an open :class:`medcbir.engine.Engine` with regions (or an index folder).
        boxes: a boxes CSV path, or rows as :func:`read_boxes` returns them.
        masks_file: masks.h5 with ``/<sop_instance_uid>/lesion-id`` (phantom v3).
        methods: names of :data:`~medcbir.explain.regions.REGION_METHODS`.
        n: box queries (spread over the labels, :func:`spread`).
        k: neighbours explained per query.
        exclude: the search's exclusion.
        n_masks, seed: RELAX masks per neighbour and their seed (the noise map's seed too).
        trivial: names of :data:`TRIVIAL_REGION_MAPS` scored beside the methods.
        progress: optional callable(str) told about each query.

    Returns:
        ``{"queries", "neighbours", "scored", "skipped": {reason: count}, "k", "exclude",
        "n_masks", "methods": {name: {metric: mean, "margin": {...}, "best_trivial": {...},
        "seconds_per_neighbour", "per_neighbour": {metric: [...]}}}, "trivial": {name: {...}},
        "decode_seconds_per_neighbour", "search_seconds_per_query"}``.
    """
    import h5py

    from medcbir.explain.runner import decode_item

    for name in methods:
        check_region_method(name)
    unknown = [t for t in trivial if t not in TRIVIAL_REGION_MAPS]
    if unknown:
        raise ConfigError(f"unknown trivial region map {unknown[0]!r}; choose from {', '.join(TRIVIAL_REGION_MAPS)}")
    if not Path(masks_file).is_file():
        raise ConfigError(f"masks file {masks_file} does not exist")
    opened = not hasattr(engine, "search")
    if opened:
        engine = Engine.open(engine)
    try:
        rows = read_boxes(boxes) if isinstance(boxes, (str, Path)) else list(boxes)
        uids = [r["sop_instance_uid"] for r in rows]
        found = engine.lookup.find(uids, [int(r["frame"]) for r in rows])
        live = [r for r, i in zip(rows, found) if i >= 0 and bool(engine.live[i])]
        skipped = {"box not an indexed item": len(rows) - len(live)}
        chosen = spread(live, n)
        if not chosen:
            raise ConfigError("no row of --roi-boxes is an item of the index")
        regions = RegionIndex.of(engine)
        per = {name: {key: [] for key in REGION_KEYS} for name in [*methods, *trivial]}
        seconds = {name: 0.0 for name in methods}
        decode_seconds = search_seconds = 0.0
        explained = scored = 0
        with h5py.File(masks_file, "r") as fh:
            for qi, row in enumerate(chosen):
                if progress:
                    progress(f"query {qi + 1}/{len(chosen)}: {row['label'] or row['sop_instance_uid']} {row['box']}")
                query = f"{row['sop_instance_uid']}:{row['frame']}"
                t0 = time.perf_counter()
                try:
                    resolved = resolve_region_query(engine, query, row["box"])
                    [neighbours] = engine.search([query], k=k, exclude=exclude, roi=row["box"])
                except (ConfigError, DecodeError):
                    skipped["query unreadable or its box outside its image"] = skipped.get("query unreadable or its box outside its image", 0) + 1
                    continue
                search_seconds += time.perf_counter() - t0
                explained += len(neighbours)
                truths = [lesion_truth(fh, str(nb.meta.get("sop_instance_uid", "")), nb.region) for nb in neighbours]
                keep = [i for i, t in enumerate(truths) if t is not None]
                skipped["matched region holds no lesion"] = skipped.get("matched region holds no lesion", 0) + len(neighbours) - len(keep)
                if not keep:
                    continue
                t0 = time.perf_counter()
                items = [decode_item(neighbours[i].meta, engine.pseudonym_key) for i in keep]
                decode_seconds += time.perf_counter() - t0
                boxes_kept = [neighbours[i].region for i in keep]
                score = MatchScore(regions.metric, regions.metric(resolved.descriptor)[0])
                hoods = neighbourhoods(items, boxes_kept)  # once for every method and trivial map
                windows = None
                for name in methods:
                    t0 = time.perf_counter()
                    maps, _, windows = region_match_maps(items, boxes_kept, score, name, n_masks=n_masks, seed=seed, hoods=hoods)
                    seconds[name] += time.perf_counter() - t0
                    for heat, i, hood in zip(maps, keep, hoods):
                        _score_into(per[name], heat, truths[i], hood, score)
                for j, (item, i) in enumerate(zip(items, keep)):
                    frame = np.asarray(item.pixels, dtype=np.float32)
                    for name in trivial:
                        heat = trivial_region_map(name, frame, neighbours[i].region, windows[j], seed=seed + scored + j)
                        _score_into(per[name], heat, truths[i], hoods[j], score)
                scored += len(keep)
    finally:
        if opened:
            engine.close()
    if not scored:
        raise ConfigError(f"none of the {explained} matched regions of {len(chosen)} queries holds a lesion in {masks_file}: nothing to score")
    rows_out = {name: {key: _mean(per[name][key]) for key in REGION_KEYS} for name in [*methods, *trivial]}
    trivial_rows = {t: rows_out[t] for t in trivial}
    out_methods = {}
    for name in methods:
        margin, best = margins(rows_out[name], trivial_rows, keys=REGION_KEYS)
        out_methods[name] = {**rows_out[name], "margin": margin, "best_trivial": best, "seconds_per_neighbour": seconds[name] / scored,
                             "per_neighbour": per[name]}
    return {
        "queries": len(chosen), "neighbours": explained, "scored": scored, "skipped": {r: c for r, c in skipped.items() if c},
        "k": int(k), "exclude": exclude, "n_masks": n_masks, "seed": int(seed),
        "methods": out_methods, "trivial": {t: {**trivial_rows[t], "per_neighbour": per[t]} for t in trivial},
        "decode_seconds_per_neighbour": decode_seconds / scored, "search_seconds_per_query": search_seconds / len(chosen),
    }


def format_region_table(result: dict) -> str:
    """The result as a fixed-width table: methods, trivial maps, margins."""
    names = [*result["methods"], *result["trivial"]]
    width = max(10, *(len(m) for m in names))
    head = " ".join([f"{'map':<{width}}"] + [f"{HEADERS[k]:>9}" for k in REGION_KEYS] + [f"{'s/nb':>9}"])
    skipped = ", ".join(f"{c} {r}" for r, c in result["skipped"].items()) or "none"
    lines = [f"region matches: {result['queries']} box queries, top-{result['k']} (exclude {result['exclude']}), "
             f"{result['neighbours']} neighbours, {result['scored']} scored on the lesions in their matched region (skipped: {skipped})", head]

    def cells(row: dict) -> list[str]:
        return [f"{row[k]:>9.3f}" if row.get(k) is not None else f"{'-':>9}" for k in REGION_KEYS]

    for name, row in result["methods"].items():
        lines.append(" ".join([f"{name:<{width}}"] + cells(row) + [f"{row['seconds_per_neighbour']:>9.3f}"]))
    lines.append("trivial maps (ignore the query and the descriptor; same neighbourhood):")
    for name, row in result["trivial"].items():
        lines.append(" ".join([f"{name:<{width}}"] + cells(row)))
    lines.append("margin over the best trivial map (positive = better than every trivial map):")
    for name, row in result["methods"].items():
        lines.append(" ".join([f"{name:<{width}}"] + cells(row["margin"])))
    return "\n".join(lines)


__all__ = ["REGION_KEYS", "TRIVIAL_REGION_MAPS", "evaluate_region_explanations", "format_region_table", "lesion_truth", "read_boxes",
           "spread", "trivial_region_map"]
