"""Region evaluation: every box of a CSV queries the index's regions, scored by the labels of what it finds.

Protocol (``medcbir evaluate INDEX --labels L --roi-boxes BOXES``; :func:`evaluate_regions`):

- **Boxes**: a CSV with the columns ``sop_instance_uid,frame,x,y,w,h`` and optionally ``label``
  (phantom v3 writes one: ``lesion-boxes.csv``). Each row is one query: the box (x = column and
  y = row of its top-left pixel, w × h pixels) in the stored pixel grid of its item, whose image is
  read from the file the index recorded as that item's source. A row that cannot be a query is
  skipped and counted by reason (:data:`SKIP_REASONS`), never fatal: ``bad-row`` (a cell that is
  not a number), ``unknown-item`` (not in the index), ``deleted-item``, ``no-label`` (no label of
  its own and none in L), ``unreadable`` (its file is gone or does not decode here),
  ``outside-image`` (an empty box, or one not inside its frame).
- **Relevance**: a neighbour is relevant when its item's label in L equals the row's ``label``;
  a row without one (no such column, or an empty cell) takes its item's label in L.
- **Searchable set**, **exclusions** and **metrics** are those of
  :func:`~medcbir.engine.evaluate.evaluate`: the labelled live items of L are the candidates; the
  query's own item is never one, and by default neither is any item of its patient
  (``exclude="same-patient"``, so every figure is patient-disjoint); ``map_at_k``, ``ap_at_k``
  (R = the query's relevant candidates), ``precision_at_k``, ``knn_accuracy`` (the majority label
  of the K neighbours against the query's label), each also ``per_class`` by query label.
- **Region search**: the box described as a region query is (:func:`~medcbir.encoders.regions.describe_query`,
  the box as drawn), ranked against the index's regions by :class:`~medcbir.engine.region_search.RegionIndex`;
  each item is answered once, with its best region.
- **whole_slice**: the same rows answered by their item's stored slice embedding (no box), with the
  same candidates, exclusions and labels, so ``map_at_k − whole_slice.map_at_k`` is the gain of
  asking about the region instead of the slice.
- **baselines** (with ``baselines=``): the same rows answered by *crops*. Every region the index
  stores for a candidate item, and each query's box, is cut from its frame, resampled to
  :data:`CROP_SIZE` px (aspect kept), windowed with the index encoder's window policy, and embedded
  by a baseline encoder (:data:`CROP_BASELINES`: ``thumbnail:16``, ``random``, ``classic``, as
  :func:`~medcbir.engine.baselines.baseline_module` builds them); a query ranks candidate items
  by their best region's cosine, with the same exclusions. They answer "does a generic
  descriptor of the same crops do as well?". They read every candidate item's image and embed
  every one of its regions: meant for evaluation archives, not for millions of items.

Example:
    >>> result = evaluate_regions(engine, "archive/labels-lesion-kind.csv", "archive/lesion-boxes.csv", k=5)  # doctest: +SKIP
    >>> result["map_at_k"] - result["whole_slice"]["map_at_k"]                                         # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcbir.encoders.regions import DIM, check_box, describe_query
from medcbir.engine.baselines import baseline_module
from medcbir.engine.evaluate import EXCLUDE_COLUMN, _groups, _leave_one_out, _summary
from medcbir.engine.filters import check_exclude
from medcbir.engine.metrics import knn_vote
from medcbir.engine.region_search import RegionIndex
from medcbir.errors import ConfigError
from medcbir.imaging import Preprocessing, SkipFile, read_dicom, resize_keep_aspect
from medcbir.imaging.labels import read_labels
from medcbir.imaging.preprocess import WindowContext, window_channels

log = logging.getLogger(__name__)

BOX_COLUMNS = ("sop_instance_uid", "frame", "x", "y", "w", "h")
SKIP_REASONS = ("bad-row", "unknown-item", "deleted-item", "no-label", "unreadable", "outside-image")
#: Baselines on crops (``--baselines`` with ``--roi-boxes``).
CROP_BASELINES: tuple[str, ...] = ("thumbnail:16", "random", "classic")
#: Side in pixels every crop is resampled to before a baseline embeds it.
CROP_SIZE = 64
#: Skipped rows listed with their line and detail (all are counted).
SKIPPED_LISTED = 20
#: Crops embedded per forward.
CROP_BATCH = 256


@dataclass(frozen=True)
class BoxRow:
    """One row of a boxes CSV: the line it is on, its item's key, its box and its own label ("" = none)."""

    line: int
    uid: str
    frame: int
    box: tuple[int, int, int, int]
    label: str


def read_boxes(path) -> tuple[list[BoxRow], list[dict]]:
    """The rows of a boxes CSV, and the rows that are not boxes (``{"line", "reason", "detail"}``).

    Raises:
        ConfigError: the file does not exist, is not UTF-8 text, or lacks a column of :data:`BOX_COLUMNS`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"boxes file {path} does not exist")
    rows: list[BoxRow] = []
    bad: list[dict] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            reader.fieldnames = fields
            missing = [c for c in BOX_COLUMNS if c not in fields]
            if missing:
                raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(BOX_COLUMNS)}[,label])")
            for line, row in enumerate(reader, start=2):
                uid = (row.get("sop_instance_uid") or "").strip()
                try:
                    frame = int((row.get("frame") or "0").strip() or 0)
                    box = tuple(int(round(float((row.get(c) or "").strip()))) for c in "xywh")
                except ValueError:
                    bad.append({"line": line, "reason": "bad-row", "detail": "frame, x, y, w and h must be numbers"})
                    continue
                if not uid:
                    bad.append({"line": line, "reason": "bad-row", "detail": "no sop_instance_uid"})
                    continue
                rows.append(BoxRow(line, uid, frame, box, (row.get("label") or "").strip()))  # type: ignore[arg-type]
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    return rows, bad


@dataclass
class _Queries:
    """The rows that became queries: their item ids, label codes, boxes, items and descriptors."""

    rows: list
    ids: np.ndarray
    codes: np.ndarray
    boxes: list
    items: list
    descriptors: np.ndarray


def evaluate_regions(engine, labels_csv, boxes_csv, k: int = 5, exclude: str = "same-patient", *, baselines=(),
                     crop_size: int = CROP_SIZE, queries="all", seed: int = 0, per_query: bool = False, snap: bool = False,
                     progress=False) -> dict:
    """Region-query MAP@K, AP@K, precision@K and kNN accuracy of every box of ``boxes_csv``, beside
    the same items searched by their whole slice (and crop baselines); see the module docstring.

    Args:
        engine: an open :class:`~medcbir.engine.Engine` whose index stores regions.
        labels_csv: ``sop_instance_uid,frame,label`` of the items (the candidates and their labels).
        boxes_csv: ``sop_instance_uid,frame,x,y,w,h[,label]``: the queries.
        k: neighbours per query.
        exclude: ``"same-patient"`` (default), ``"same-study"`` or ``"none"``; the query's own
            item is always left out.
        baselines: crop baseline names (:data:`CROP_BASELINES`); empty = none.
        crop_size: the side crops are resampled to for the baselines.
        queries: ``"all"`` rows, or an int n for a seeded random sample of n rows.
        seed: the sample's seed.
        per_query: also return ``per_query``: each query's row and the items each search found.
        snap: replace each row's box by the structure it was drawn around, as ``search --snap``
            does (:func:`~medcbir.encoders.regions.describe_query`); the crop baselines then crop
            the snapped box too.
        progress: while the crop baselines embed the candidates' regions, ``True`` shows a progress
            bar on stderr; a callable is called with (items done, items in all) instead.

    Returns:
        ``{"k", "exclude", "relevance", "queries": {"rows", "count", "skipped", "skipped_rows"},
        "n_queries", "searchable", "map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy",
        "n_queries_without_relevant", "per_class", "whole_slice": {...}, "gain_over_whole_slice",
        "baselines": {...}}``; ``relevance`` is ``"row-label"`` when the rows carry labels, else ``"item-label"``.

    Raises:
        ConfigError: the index has no regions, a file is missing or malformed, or no row can be a query.
    """
    check_exclude(exclude)
    k = int(k)
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    if int(crop_size) < 8:
        raise ConfigError(f"crop size must be ≥ 8 pixels, got {crop_size}")
    engine.require_items()
    regions = RegionIndex.of(engine)  # an index without regions fails here, in one line
    names, label_of_id, searchable, n_unknown, n_deleted = _labels(engine, labels_csv)
    rows, skipped = read_boxes(boxes_csv)
    n_rows = len(rows) + len(skipped)
    if queries != "all" and int(queries) < len(rows):
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=int(queries), replace=False))
        rows = [rows[i] for i in pick]
    own_label = bool(rows) and any(r.label for r in rows)
    chosen = _resolve(engine, rows, names, label_of_id, skipped, snap=snap)
    counts = Counter(s["reason"] for s in skipped)
    summary = {"rows": n_rows, "count": len(chosen.rows), "skipped": {r: counts[r] for r in SKIP_REASONS if counts[r]},
               "skipped_rows": sorted(skipped, key=lambda s: s["line"])[:SKIPPED_LISTED]}
    if not len(chosen.rows):
        reasons = ", ".join(f"{n} {r}" for r, n in summary["skipped"].items()) or "the file has no rows"
        raise ConfigError(f"no row of {boxes_csv} can be a region query ({reasons})")

    admissible = _Admissible(engine, searchable, exclude)
    n_relevant = np.array([int(np.count_nonzero(admissible(i) & (label_of_id == c))) for i, c in zip(chosen.ids, chosen.codes)],
                          dtype=np.int64)
    found = np.full((len(chosen.ids), k), -1, dtype=np.int64)
    found_boxes = np.full((len(chosen.ids), k, 4), -1, dtype=np.int64)
    vectors = regions.metric(chosen.descriptors)
    for q, item_id in enumerate(chosen.ids.tolist()):
        hits = regions.search(vectors[q], k, admissible(item_id))
        found[q, :len(hits)] = [h[0] for h in hits]
        if hits:
            found_boxes[q, :len(hits)] = [h[2] for h in hits]
    result: dict = {
        "k": k,
        "exclude": exclude,
        "relevance": "row-label" if own_label else "item-label",
        "queries": summary,
        "n_queries": len(chosen.rows),
        "searchable": int(np.count_nonzero(searchable)),
        "n_labels_unknown": n_unknown,
        "n_labels_deleted": n_deleted,
        "regions": {"indexed": len(regions), "version": (getattr(engine.store, "manifest", {}).get("regions") or {}).get("version")},
        "snap": bool(snap),
    }
    result.update(_scores(found, chosen.codes, label_of_id, n_relevant, names))

    slice_vectors = np.ascontiguousarray(engine.embeddings(chosen.ids), dtype=np.float32)
    _, whole = _leave_one_out(engine, slice_vectors, chosen.ids, k, searchable, _groups(engine, chosen.ids, exclude))
    result["whole_slice"] = _scores(whole, chosen.codes, label_of_id, n_relevant, names)
    result["gain_over_whole_slice"] = result["map_at_k"] - result["whole_slice"]["map_at_k"]
    crop_found: dict = {}
    if baselines:
        report = _progress_callback(progress)
        try:
            result["baselines"] = _crop_baselines(engine, regions, searchable, chosen, admissible, list(baselines), int(crop_size), k,
                                                  label_of_id, n_relevant, names, crop_found, report)
        finally:
            if report is not None and hasattr(report, "close"):
                report.close()
    if per_query:
        result["per_query"] = _per_query(engine, chosen, names, found, found_boxes, whole, crop_found)
    return result


def _per_query(engine, chosen: _Queries, names: list[str], found, found_boxes, whole, crop_found: dict) -> list[dict]:
    """Each query's row and what each search found (items by SOP UID and frame; regions with their box)."""
    ids = np.unique(np.concatenate([found.ravel(), whole.ravel(), *[f.ravel() for f in crop_found.values()], [-1]]))
    ids = ids[ids >= 0]
    keys = {int(i): (m["sop_instance_uid"], int(m["frame"])) for i, m in zip(ids.tolist(), engine.meta(ids) if len(ids) else [])}

    def items(row):
        return [list(keys[i]) for i in row.tolist() if i >= 0]

    out = []
    for q, row in enumerate(chosen.rows):
        out.append({
            "line": row.line, "sop_instance_uid": row.uid, "frame": row.frame, "box": list(chosen.boxes[q]),
            "label": names[int(chosen.codes[q])],
            "region": [{"sop_instance_uid": keys[i][0], "frame": keys[i][1], "region": [int(v) for v in box]}
                       for i, box in zip(found[q].tolist(), found_boxes[q].tolist()) if i >= 0],
            "whole_slice": items(whole[q]),
            "baselines": {name: items(f[q]) for name, f in crop_found.items()},
        })
    return out


def _labels(engine, labels_csv) -> tuple[list[str], np.ndarray, np.ndarray, int, int]:
    """(label names, label code per id (-1 = none), searchable mask, rows unknown, rows deleted)."""
    table = read_labels(labels_csv)
    found = engine.lookup.find(list(table.uids), list(table.frames)) if len(table) else np.zeros(0, np.int64)
    names = sorted(set(table.labels))
    code_of = {name: c for c, name in enumerate(names)}
    label_of_id = np.full(engine.id_range, -1, dtype=np.int64)
    for id_, name in zip(found.tolist(), table.labels):
        if id_ >= 0:
            label_of_id[id_] = code_of[name]  # the last label of a key wins, as in evaluate
    labelled = label_of_id >= 0
    searchable = labelled & engine.live
    if not searchable.any():
        raise ConfigError(f"no labelled item of {labels_csv} is in the index")
    return names, label_of_id, searchable, int(np.count_nonzero(found < 0)), int(np.count_nonzero(labelled & ~engine.live))


def _progress_callback(progress):
    """None, the callable given, or (``True``) a progress bar on stderr called with (done, total)."""
    if not progress:
        return None
    if callable(progress):
        return progress
    return _Bar()


class _Bar:
    """A tqdm bar on stderr for the crop baselines, fed (items done, items in all)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="crop baselines", unit="item", file=sys.stderr, leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _resolve(engine, rows: list[BoxRow], names: list[str], label_of_id: np.ndarray, skipped: list[dict], snap: bool = False) -> _Queries:
    """The rows that can be queries (read, boxed and described); the others appended to ``skipped``."""
    found = engine.lookup.find([r.uid for r in rows], [r.frame for r in rows]) if rows else np.zeros(0, np.int64)
    items = _read_items(engine, sorted({int(i) for i in found.tolist() if i >= 0 and engine.live[i]}))
    code_of = {name: c for c, name in enumerate(names)}
    out = _Queries([], np.zeros(0, np.int64), np.zeros(0, np.int64), [], [], np.zeros((0, 0), np.float32))
    ids, codes, descriptors = [], [], []

    def skip(row, reason, detail):
        skipped.append({"line": row.line, "reason": reason, "detail": detail})

    for row, item_id in zip(rows, found.tolist()):
        if item_id < 0:
            skip(row, "unknown-item", f"{row.uid} frame {row.frame} is not in the index")
            continue
        if not engine.live[item_id]:
            skip(row, "deleted-item", f"{row.uid} frame {row.frame} was deleted from the index")
            continue
        label = row.label or (names[label_of_id[item_id]] if label_of_id[item_id] >= 0 else "")
        if not label:
            skip(row, "no-label", f"{row.uid} frame {row.frame}: the row has no label and the labels file none for its item")
            continue
        item = items[item_id]
        if isinstance(item, str):
            skip(row, "unreadable", item)
            continue
        try:
            box = check_box(row.box, item.pixels.shape)
            descriptor, box = describe_query(item, box, snap=snap)
        except ConfigError as exc:
            skip(row, "outside-image", str(exc))
            continue
        if label not in code_of:  # a kind no item carries: a query with nothing relevant to find
            code_of[label] = len(names)
            names.append(label)
        out.rows.append(row)
        out.boxes.append(box)
        out.items.append(item)
        ids.append(item_id)
        codes.append(code_of[label])
        descriptors.append(descriptor)
    out.ids = np.asarray(ids, dtype=np.int64)
    out.codes = np.asarray(codes, dtype=np.int64)
    out.descriptors = np.asarray(descriptors, dtype=np.float32).reshape(len(ids), DIM)
    return out


def _read_items(engine, ids) -> dict:
    """``{id: Item in modality units | why it cannot be read}``, each source file decoded once."""
    out: dict = {}
    by_file: dict = {}
    for id_, meta in zip(ids, engine.meta(np.asarray(ids, dtype=np.int64)) if ids else []):
        by_file.setdefault(str(meta.get("source", "")), []).append((int(id_), int(meta.get("frame", 0))))
    for source, members in by_file.items():
        frames, reason = _read_frames(engine, source)
        for id_, frame in members:
            if reason:
                out[id_] = reason
            elif frame >= len(frames):
                out[id_] = f"{source}: {len(frames)} frame(s), not frame {frame}"
            else:
                out[id_] = frames[frame]
    return out


def _read_frames(engine, source: str) -> tuple[list, str]:
    if not source or "://" in source:
        return [], f"source {source or '(none)'} is not a file here; region queries need the image itself"
    path = Path(engine.source_path(source))
    if not path.is_file():
        return [], f"source file {path} is gone"
    try:
        return read_dicom(path, key=engine.pseudonym_key), ""
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one skipped row, not a traceback
        return [], f"cannot decode {path}: {exc.__class__.__name__}: {exc}"


class _Admissible:
    """The candidates of a query item: searchable, minus its exclusion group, minus itself."""

    def __init__(self, engine, searchable: np.ndarray, exclude: str) -> None:
        self.engine, self.searchable = engine, searchable
        self.column = EXCLUDE_COLUMN.get(exclude)
        self._groups: dict = {}

    def __call__(self, item_id: int) -> np.ndarray:
        base = self.searchable
        if self.column is not None:
            value = self.engine.meta_column(self.column, [item_id])[0]
            if value:
                if value not in self._groups:
                    self._groups[value] = self.searchable & ~self.engine.exclusion_mask(self.column, value)
                base = self._groups[value]
        out = base.copy()
        out[item_id] = False
        return out


def _scores(found: np.ndarray, codes: np.ndarray, label_of_id: np.ndarray, n_relevant: np.ndarray, names: list[str]) -> dict:
    """Metrics of neighbour ids (Q×K, -1 = none) against the queries' label codes, overall and per class."""
    labels = np.where(found >= 0, label_of_id[np.maximum(found, 0)], -1)
    relevant = labels == codes[:, None]
    predicted = knn_vote(labels)
    out = _summary(relevant, n_relevant, predicted, codes)
    out["n_queries_without_relevant"] = int(np.count_nonzero(n_relevant == 0))
    out["per_class"] = {name: _summary(relevant[codes == c], n_relevant[codes == c], predicted[codes == c], codes[codes == c])
                        for c, name in enumerate(names) if np.any(codes == c)}
    return out


# ---------------------------------------------------------------------------- crop baselines
def crop(item, box, preprocessing: Preprocessing, size: int, context: WindowContext | None = None) -> np.ndarray:
    """C×size×size in [0, 1]: the box of ``item`` resampled to ``size`` px (aspect kept, padded
    with the image's dark end), windowed like the encoder's input.

    Raises:
        SkipFile: ``modality-mismatch`` when the window policy does not cover the item's modality.
    """
    x, y, w, h = (int(v) for v in box)
    windows = preprocessing.channel_windows(item)
    context = context or WindowContext.of(item)
    pixels = np.asarray(item.pixels, dtype=np.float32)
    fill = float(pixels.max()) if item.inverted else float(pixels.min())
    square = resize_keep_aspect(pixels[y:y + h, x:x + w], size, fill=fill)
    return window_channels(square, [context.range(win) for win in windows], item.inverted)


class _CropEmbedder:
    """Crops in, one embedding per baseline out, in batches."""

    def __init__(self, names: list[str], preprocessing: Preprocessing) -> None:
        self.modules = {name: baseline_module(name, preprocessing).eval() for name in names}
        self.dims = {name: int(m.arch["dim"]) for name, m in self.modules.items()}

    def __call__(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.stack(crops))
        with torch.inference_mode():
            return {name: m(x).float().numpy() for name, m in self.modules.items()}


def _crop_baselines(engine, regions: RegionIndex, searchable, chosen: _Queries, admissible: _Admissible, names: list[str],
                    size: int, k: int, label_of_id, n_relevant, label_names, found_out: dict, progress=None) -> dict:
    """The rows answered by crop baselines: best region per candidate item by cosine of crop embeddings
    (the neighbour ids of each baseline are put in ``found_out``)."""
    unknown = [n for n in names if n not in CROP_BASELINES and not n.startswith(("thumbnail:", "random"))]
    if unknown:
        raise ConfigError(f"unknown crop baseline(s) {', '.join(unknown)} (known: {', '.join(CROP_BASELINES)})")
    recorded = Preprocessing.from_dict(engine.store.encoder_info["preprocessing"])
    windowing = Preprocessing(windows=recorded.windows, size=size)  # the encoder's windows on crops; no body crop
    embed = _CropEmbedder(names, windowing)
    rows = np.flatnonzero(searchable[regions.item_ids])  # regions of candidate items
    region_vectors = {name: np.zeros((len(rows), dim), dtype=np.float32) for name, dim in embed.dims.items()}
    has = np.zeros(len(rows), dtype=bool)
    order = rows[np.argsort(regions.item_ids[rows], kind="stable")]
    position = {int(r): p for p, r in enumerate(rows.tolist())}
    batch, where = [], []
    n_items_without = 0

    def flush():
        if batch:
            for name, v in embed(batch).items():
                region_vectors[name][where] = v
            has[where] = True
            batch.clear()
            where.clear()

    item_rows = np.split(order, np.flatnonzero(np.diff(regions.item_ids[order])) + 1) if len(order) else []
    group_ids = [int(regions.item_ids[g[0]]) for g in item_rows]
    for start in range(0, len(group_ids), 64):  # read a few files at a time: memory stays flat
        part = group_ids[start:start + 64]
        items = _read_items(engine, sorted(part))
        for item_id, members in zip(part, item_rows[start:start + 64]):
            item = items.get(item_id)
            if isinstance(item, str) or item is None:
                n_items_without += 1
                continue
            try:
                context = WindowContext.of(item)
                crops = [crop(item, regions.boxes[r], windowing, size, context) for r in members.tolist()]
            except SkipFile:
                n_items_without += 1
                continue
            for r, c in zip(members.tolist(), crops):
                batch.append(c)
                where.append(position[r])
                if len(batch) >= CROP_BATCH:
                    flush()
        log.info("crop baselines: %d of %d items embedded", min(start + 64, len(group_ids)), len(group_ids))
        if progress is not None:
            progress(min(start + 64, len(group_ids)), len(group_ids))
    flush()

    query_crops, usable = [], []
    for q, (item, box) in enumerate(zip(chosen.items, chosen.boxes)):
        try:
            query_crops.append(crop(item, box, windowing, size))
            usable.append(q)
        except SkipFile:
            continue
    query_vectors = {name: np.zeros((len(chosen.ids), dim), dtype=np.float32) for name, dim in embed.dims.items()}
    for start in range(0, len(query_crops), CROP_BATCH):
        for name, v in embed(query_crops[start:start + CROP_BATCH]).items():
            query_vectors[name][usable[start:start + CROP_BATCH]] = v
    candidate_items = regions.item_ids[rows]
    out: dict = {}
    for name in names:
        found = np.full((len(chosen.ids), k), -1, dtype=np.int64)
        scores = query_vectors[name] @ region_vectors[name].T  # Q × regions, cosines (unit vectors)
        for q in usable:
            keep = admissible(int(chosen.ids[q]))[candidate_items] & has
            found[q] = _best_items(scores[q], keep, candidate_items, k)
        result = _scores(found, chosen.codes, label_of_id, n_relevant, label_names)
        result["encoder"] = name
        out[name] = result
        found_out[name] = found
    out["crop"] = {"size": size, "windows": list(windowing.to_dict()["windows"]), "regions": int(np.count_nonzero(has)),
                   "items_without_crops": n_items_without, "queries_without_crop": len(chosen.ids) - len(usable)}
    return out


def _best_items(scores: np.ndarray, keep: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The k items whose best kept region scores highest (-1 padded), best first."""
    out = np.full(k, -1, dtype=np.int64)
    rows = np.flatnonzero(keep)
    if not len(rows):
        return out
    ranked = rows[np.argsort(-scores[rows], kind="stable")]
    owners = items[ranked]
    _, first = np.unique(owners, return_index=True)
    top = owners[np.sort(first)[:k]]
    out[:len(top)] = top
    return out
