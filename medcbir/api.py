"""The public API of medcbir: index an archive, search it, evaluate and explain retrieval, embed images.

``medcbir/__init__.py`` exports these names lazily: ``import medcbir`` loads neither torch nor
FAISS, the first call does. Three conventions hold for every function:

- **The first argument is the index**: a folder path, or an :class:`~medcbir.engine.Engine`
  already open (:func:`open_index`); a path is opened for the call and closed after it. Only
  :func:`index` (the folder to create or resume) and :func:`embed` (no index at all: the archive
  comes first) differ.
- **exclude defaults to** :data:`EXCLUDE` = ``"same-patient"`` in :func:`search`,
  :func:`evaluate` and :func:`explain`: neighbours from the query's own patient are left out
  unless ``exclude="none"``. A patient's adjacent slices are always its nearest neighbours; a
  retrieval that returns them shows no similar *case*, and an evaluation that counts them
  measures slice adjacency. (``Engine.search`` and the CLI's ``search`` and ``explain`` commands
  keep their own default, ``"none"``; ``medcbir evaluate`` excludes the same patient.)
- **Results are dataclasses** (:class:`~medcbir.indexer.IndexSummary`, lists of
  :class:`~medcbir.engine.Neighbour`, :class:`Evaluation`, :class:`~medcbir.explain.runner.Explanation`,
  :class:`~medcbir.encoders.embedding.Embeddings`), never dicts.

The examples run in the test suite (``tests/test_api.py``) on a phantom archive: ``archive`` is a
folder written by :func:`medcbir.imaging.phantom.make_archive` (3 patients × 8 slices),
``index_dir`` an index of it, ``query`` one of its DICOM files and ``tmp`` an empty folder.

Example:
    >>> import medcbir
    >>> summary = medcbir.index(tmp / "tour", archive, "thumbnail:8")
    >>> summary.indexed
    24
    >>> [hits] = medcbir.search(tmp / "tour", [query], k=3)
    >>> [nb.rank for nb in hits]
    [1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medcbir.encoders.embedding import Embeddings, embed_archive
from medcbir.engine import Engine, Neighbour, open_engine
from medcbir.engine import evaluate as evaluate_engine
from medcbir.engine.region_evaluate import CROP_BASELINES, evaluate_regions
from medcbir.errors import ConfigError
from medcbir.explain.regions import RegionExplanation, explain_region_match
from medcbir.explain.runner import Explanation, explain_search
from medcbir.indexer import IndexSummary, index_archive
from medcbir.indexer.region_refresh import RefreshSummary
from medcbir.indexer.region_refresh import refresh_regions as refresh_index_regions

#: What :func:`search`, :func:`evaluate` and :func:`explain` leave out unless told otherwise.
EXCLUDE = "same-patient"


@dataclass(frozen=True)
class ClassScores:
    """Retrieval scores over the queries of one label (or all of them)."""

    n_queries: int
    map_at_k: float
    ap_at_k: float
    precision_at_k: float
    knn_accuracy: float

    @classmethod
    def from_row(cls, row: dict) -> "ClassScores":
        """From one row of an evaluation record (its per-label, whole-slice or baseline scores)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Evaluation:
    """Leave-one-out retrieval scores of an index against labels (:func:`evaluate`).

    Attributes:
        k: neighbours per query.
        exclude: what each query's neighbours left out besides the query itself.
        n_queries: labelled live items used as queries.
        searchable: labelled live items (the candidates).
        n_labels_unknown: label rows whose item is not in the index.
        n_labels_deleted: label rows of deleted items.
        index_spec: the index's FAISS spec; ``exact`` whether its search is exact.
        map_at_k, ap_at_k, precision_at_k, knn_accuracy: over all queries.
        n_queries_without_relevant: queries with no item of their label left to find.
        per_class: label → its :class:`ClassScores`.
        recall_vs_exact: recall@K of the approximate index against exact search (None when exact).
    """

    k: int
    exclude: str
    n_queries: int
    searchable: int
    n_labels_unknown: int
    n_labels_deleted: int
    index_spec: str
    exact: bool
    map_at_k: float
    ap_at_k: float
    precision_at_k: float
    knn_accuracy: float
    n_queries_without_relevant: int
    per_class: dict[str, ClassScores]
    recall_vs_exact: float | None = None

    @classmethod
    def from_record(cls, record: dict) -> "Evaluation":
        """From the record :func:`medcbir.engine.evaluate` returns (what ``medcbir evaluate --json`` prints)."""
        per_class = {name: ClassScores.from_row(row) for name, row in record["per_class"].items()}
        values = {f.name: record.get(f.name) for f in fields(cls) if f.name != "per_class"}
        return cls(per_class=per_class, **values)


@dataclass(frozen=True)
class RegionEvaluation:
    """Region-query retrieval scores of an index against labels (:func:`evaluate` with ``roi_boxes``).

    Every usable row of the boxes file is one region query; its neighbours are the regions of
    other labelled items, each item once with its best region (``medcbir evaluate --roi-boxes``).

    Attributes:
        k, exclude: as in :class:`Evaluation`.
        relevance: ``"row-label"`` (the rows carry labels) or ``"item-label"`` (the query item's).
        rows: rows in the boxes file; n_queries: those that became queries.
        skipped: rows that could not be queries, counted by reason (``unknown-item``, ...).
        searchable: labelled live items (the candidates).
        n_labels_unknown, n_labels_deleted: as in :class:`Evaluation`.
        snap: whether each box was replaced by the structure it was drawn around.
        map_at_k, ap_at_k, precision_at_k, knn_accuracy: over all region queries.
        n_queries_without_relevant: queries with no item of their label left to find.
        per_class: label → its :class:`ClassScores` (region search).
        whole_slice: the same queries searched by their whole slice's stored embedding.
        gain_over_whole_slice: ``map_at_k − whole_slice.map_at_k``.
        baselines: crop baseline name → its :class:`ClassScores` (empty unless asked for).
    """

    k: int
    exclude: str
    relevance: str
    rows: int
    n_queries: int
    skipped: dict[str, int]
    searchable: int
    n_labels_unknown: int
    n_labels_deleted: int
    snap: bool
    map_at_k: float
    ap_at_k: float
    precision_at_k: float
    knn_accuracy: float
    n_queries_without_relevant: int
    per_class: dict[str, ClassScores]
    whole_slice: ClassScores
    gain_over_whole_slice: float
    baselines: dict[str, ClassScores]

    @classmethod
    def from_record(cls, record: dict) -> "RegionEvaluation":
        """From the record :func:`medcbir.engine.region_evaluate.evaluate_regions` returns (what
        ``medcbir evaluate --roi-boxes --json`` prints)."""
        scores = ClassScores.from_row
        return cls(k=record["k"], exclude=record["exclude"], relevance=record["relevance"], rows=record["queries"]["rows"],
                   n_queries=record["n_queries"], skipped=dict(record["queries"]["skipped"]), searchable=record["searchable"],
                   n_labels_unknown=record["n_labels_unknown"], n_labels_deleted=record["n_labels_deleted"], snap=bool(record.get("snap")),
                   map_at_k=record["map_at_k"], ap_at_k=record["ap_at_k"], precision_at_k=record["precision_at_k"],
                   knn_accuracy=record["knn_accuracy"], n_queries_without_relevant=record["n_queries_without_relevant"],
                   per_class={name: scores(row) for name, row in record["per_class"].items()},
                   whole_slice=scores(record["whole_slice"]), gain_over_whole_slice=record["gain_over_whole_slice"],
                   baselines={name: scores(row) for name, row in record.get("baselines", {}).items() if name != "crop"})


def _engine(index: Any) -> tuple[Engine, bool]:
    """(the engine, whether this call opened it and must close it)."""
    if isinstance(index, Engine):
        return index, False
    return Engine.open(index), True


def _filled(neighbours: list[Neighbour]) -> list[Neighbour]:
    """Neighbours with their metadata read now, so they outlive the engine that found them."""
    for nb in neighbours:
        nb.meta  # noqa: B018 - reading it fills the neighbour's metadata
    return neighbours


def index(index: str | Path, archive: Any, encoder: Any = "default", *, progress: bool = False, **options: Any) -> IndexSummary:
    """Embed every item of an archive into an index: created, or resumed and extended.

    Re-running on the same archive adds nothing twice (items are keyed by SOP Instance UID
    and frame); an index refuses an encoder other than the one it was built with.

    Args:
        index: the index folder.
        archive: a folder or file of DICOM (walked recursively), or a
            :class:`medcbir.imaging.Source`.
        encoder: a built-in name (``"default"``, ``"thumbnail:16"``, ...), a checkpoint or ONNX
            path, your own model (an encoder spec file, ``hf:DIR``, ...), or an encoder object
            (:func:`medcbir.encoders.runtime.open_encoder`).
        progress: show a progress bar on stderr.
        **options: of :func:`medcbir.indexer.index_archive` (``index_spec``, ``shard_size``,
            ``workers``, ``device``, ``batch_size``, ``key_file``, ``target_recall``, ``ray``, ...).

    Returns:
        What the job did (items indexed, files skipped by reason, shards, FAISS spec).

    Example:
        >>> import medcbir
        >>> summary = medcbir.index(tmp / "new-index", archive, "thumbnail:8")
        >>> summary.indexed, summary.shards
        (24, 1)
        >>> medcbir.index(tmp / "new-index", archive, "thumbnail:8").indexed   # resumed: nothing new
        0
    """
    return index_archive(archive, index, encoder, progress=progress, **options)


def refresh_regions(index: str | Path, archive: Any = None, *, progress: bool = False, **options: Any) -> RefreshSummary:
    """Re-describe an index's regions in place by this medcbir's region recipe, from the items'
    files, or add regions to an index built with ``regions=False``: the slice embeddings and
    the FAISS index are not touched, and the slices are not embedded again. Resumable shard by
    shard (``medcbir index ARCHIVE --out INDEX --refresh-regions``).

    Args:
        index: the index folder.
        archive: None (the files the index recorded), the archive folder (it limits the files to
            that folder, or stands for the archive root when the archive moved), or a network
            :class:`medcbir.imaging.Source` (DICOMweb) the index was built from.
        progress: show a progress bar on stderr.
        **options: of :func:`medcbir.indexer.region_refresh.refresh_regions` (``workers``,
            ``key_file``, ``regions_per_image``).

    Returns:
        What it did: shards re-described, items, regions, and the items left without regions by
        reason with their sources (a file gone, changed, unreadable).

    Example:
        >>> import medcbir
        >>> medcbir.index(tmp / "plain", archive, "thumbnail:8", regions=False).indexed
        24
        >>> done = medcbir.refresh_regions(tmp / "plain", archive)
        >>> done.complete, done.previous, done.items, done.skipped
        (True, None, 24, {})
    """
    return refresh_index_regions(index, archive, progress=progress, **options)


def open_index(index: Any, encoder: Any = None, *, device: Any = None, verify: str = "checksums", ray: Any = None, shards: int | None = None) -> Engine:
    """Open an index for many calls (each function also takes the path and opens it for one call).

    Args:
        index: the index folder (an :class:`~medcbir.engine.Engine` is returned as it is).
        encoder: None = the encoder the index records, loaded on the first image query;
            or anything :func:`medcbir.encoders.runtime.open_encoder` takes (refused when its
            fingerprint differs from the index's).
        device: the :class:`~medcbir.device.Device` (None = automatic).
        verify: ``"checksums"``, ``"sizes"`` or ``"none"``: how committed files are checked.
        ray, shards: spread the search over Ray actors (:func:`medcbir.engine.open_engine`).

    Returns:
        The :class:`~medcbir.engine.Engine`; close it (or use ``with``) when done.

    Example:
        >>> import medcbir
        >>> with medcbir.open_index(index_dir) as engine:
        ...     len(engine)
        24
    """
    if isinstance(index, Engine):
        return index
    return open_engine(index, encoder=encoder, device=device, verify=verify, ray=ray, shards=shards)


def search(index: Any, queries: Any, k: int = 10, *, exclude: str = EXCLUDE, **options: Any) -> list[list[Neighbour]]:
    """The K nearest items of each query.

    Args:
        index: the index folder or an open :class:`~medcbir.engine.Engine`.
        queries: a list of queries (DICOM paths, SOP Instance UIDs in the index, images or
            embeddings; see :meth:`medcbir.engine.Engine.search`); one path or UID alone is a
            list of one.
        k: neighbours per query.
        exclude: ``"same-patient"`` (default), ``"same-study"`` or ``"none"``.
        **options: filters and limits of :meth:`~medcbir.engine.Engine.search` (``modality``,
            ``body_part``, ``series``, ``study``, ``per_series``, ``include_self``).

    Returns:
        One list of :class:`~medcbir.engine.Neighbour` per query, best first.

    Example:
        >>> import medcbir
        >>> [hits] = medcbir.search(index_dir, query, k=5)
        >>> [nb.rank for nb in hits]
        [1, 2, 3, 4, 5]
        >>> query_patient = medcbir.search(index_dir, query, k=1, exclude="none", include_self=True)[0][0].meta["patient_pseudonym"]
        >>> any(nb.meta["patient_pseudonym"] == query_patient for nb in hits)
        False
    """
    if isinstance(queries, (str, Path)):
        queries = [queries]
    engine, opened = _engine(index)
    try:
        return [_filled(hits) for hits in engine.search(list(queries), k=k, exclude=exclude, **options)]
    finally:
        if opened:
            engine.close()


def evaluate(index: Any, labels: str | Path, k: int = 5, *, exclude: str = EXCLUDE, queries: int | str = "all", seed: int = 0,
             roi_boxes: str | Path | None = None, snap: bool = False, baselines: bool | Iterable[str] = False,
             progress: bool = False) -> Evaluation | RegionEvaluation:
    """Leave-one-out retrieval quality: each labelled item queries the others.

    With ``roi_boxes`` it is region retrieval quality instead (``medcbir evaluate --roi-boxes``):
    every row of that CSV (``sop_instance_uid,frame,x,y,w,h[,label]``, e.g. phantom v3's
    ``lesion-boxes.csv``) is a region query, and a neighbour is relevant when its item's label in
    ``labels`` equals the row's ``label`` (or, without one, the query item's label). The index must
    store regions; the query images are read from the files the index recorded.

    Args:
        index: the index folder or an open :class:`~medcbir.engine.Engine`.
        labels: a ``labels.csv`` (``sop_instance_uid,frame,label``; :mod:`medcbir.imaging.labels`).
        k: neighbours per query.
        exclude: ``"same-patient"`` (default), ``"same-study"`` or ``"none"``; the query itself is
            always left out.
        queries: ``"all"`` labelled items, or a number for a seeded random sample of them.
        seed: the sample's seed.
        roi_boxes: the boxes CSV of a region evaluation (None: slice evaluation).
        snap: with ``roi_boxes``, describe the structure each box was drawn around instead of the
            box as drawn (as ``search(..., snap=True)``).
        baselines: with ``roi_boxes``, also answer the same rows by crop embeddings: ``True`` for
            ``thumbnail:16``, ``random`` and ``classic``, or an iterable of those names. They read
            and embed every region of every candidate item (minutes on a few hundred slices).
        progress: with ``baselines``, a progress bar on stderr while the crops are embedded.

    Returns:
        An :class:`Evaluation` (MAP@K, AP@K, precision@K, kNN accuracy, per label); with
        ``roi_boxes`` a :class:`RegionEvaluation` (the same scores for the region queries, the
        same rows searched by their whole slice, and the crop baselines).

    Raises:
        ConfigError: ``snap``, ``baselines`` or ``progress`` without ``roi_boxes``; the index stores
            no regions; a file is missing or malformed; no row of ``roi_boxes`` can be a query.

    Example:
        >>> import medcbir
        >>> result = medcbir.evaluate(index_dir, archive / "labels.csv", k=3)
        >>> result.n_queries, result.exclude, 0.0 <= result.map_at_k <= 1.0
        (24, 'same-patient', True)
        >>> sorted(result.per_class)
        ['kidney', 'liver-dome', 'liver-kidney', 'pelvis', 'thorax']
    """
    if roi_boxes is None and (snap or baselines or progress):
        raise ConfigError("snap, baselines and progress apply to a region evaluation (roi_boxes=...)")
    names = tuple(CROP_BASELINES if baselines is True else (baselines or ()))
    engine, opened = _engine(index)
    try:
        if roi_boxes is not None:
            return RegionEvaluation.from_record(evaluate_regions(engine, labels, roi_boxes, k=k, exclude=exclude, queries=queries, seed=seed,
                                                                 baselines=names, snap=snap, progress=progress))
        return Evaluation.from_record(evaluate_engine(engine, labels, k=k, exclude=exclude, queries=queries, seed=seed))
    finally:
        if opened:
            engine.close()


def explain(index: Any, query: Any, k: int = 5, *, method: str = "relax", exclude: str = EXCLUDE, pairwise: bool = False, roi: Any = None,
            roi_mask: Any = None, snap: bool = False, **options: Any) -> Explanation | RegionExplanation:
    """Search, then explain why the query matched each of its top-K neighbours (one batched pass).

    Args:
        index: the index folder or an open :class:`~medcbir.engine.Engine`.
        query: a DICOM path, a SOP Instance UID in the index, or a C×S×S image.
        k: neighbours.
        method: a name of :data:`medcbir.explain.METHODS` (``relax``, ``gradcam``, ...); with
            ``roi``, ``relax`` or ``occlusion``.
        exclude: ``"same-patient"`` (default), ``"same-study"`` or ``"none"``.
        pairwise: also explain the query with respect to each neighbour.
        roi: explain a region match instead: the query box ``(x, y, w, h)`` in the query frame's
            stored pixel grid (or ``roi_mask``, a mask on it; ``snap`` as in :func:`search`);
            see :func:`medcbir.explain.regions.explain_region_match`.
        **options: of the method (``n_masks``, ``seed``, ...) and ``include_self``.

    Returns:
        An :class:`~medcbir.explain.runner.Explanation`: the images (query first), one heatmap
        per image, the neighbours; with ``roi`` a
        :class:`~medcbir.explain.regions.RegionExplanation`: one map per neighbour over its frame.

    Example:
        >>> import medcbir
        >>> result = medcbir.explain(index_dir, query, k=2, method="gradcam")
        >>> result.images.shape[0], result.heatmaps.shape[0], len(result.neighbours)
        (3, 3, 2)
    """
    engine, opened = _engine(index)
    try:
        if roi is not None or roi_mask is not None:
            if pairwise:
                raise ConfigError("pairwise explains the query w.r.t. neighbours' embeddings: it does not apply to a region match")
            result = explain_region_match(engine, query, roi, k, roi_mask=roi_mask, exclude=exclude, method=method, snap=snap, **options)
        else:
            result = explain_search(engine, query, k=k, method=method, pairwise=pairwise, exclude=exclude, **options)
        _filled(result.neighbours)
        return result
    finally:
        if opened:
            engine.close()


def embed(archive: str | Path | Iterable[Path], encoder: Any = "default", **options: Any) -> Embeddings:
    """Embed every item of an archive, as indexing would, without an index.

    Args:
        archive: a folder (walked recursively), one DICOM file, or a list of files.
        encoder: a built-in name, a checkpoint or ONNX path, your own model (an encoder spec
            file, ``hf:DIR``, a model file with a ``FILE.json`` sidecar, an ``EncoderSpec``), or
            an encoder object.
        **options: ``batch_size``, ``workers``, ``device``, ``key`` (the pseudonym key) of
            :func:`medcbir.encoders.embedding.embed_archive`.

    Returns:
        :class:`~medcbir.encoders.embedding.Embeddings`: ``keys`` (SOP Instance UID, frame) row
        for row with ``vectors`` (N×D, unit rows).

    Example:
        >>> import medcbir
        >>> found = medcbir.embed(archive, "thumbnail:8")
        >>> found.vectors.shape, len(found.keys)
        ((24, 64), 24)
        >>> found.keys[0][1]
        0
    """
    return embed_archive(archive, encoder, **options)


__all__ = ["EXCLUDE", "ClassScores", "Evaluation", "embed", "evaluate", "explain", "index", "open_index", "refresh_regions", "search"]
