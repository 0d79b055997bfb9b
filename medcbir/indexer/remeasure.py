"""Recall of a committed index re-measured on all its items as it grows.

Recall falls as an index grows (more items compete for the same top 10, new kinds of images
pile into lists trained before they existed), so the recall measured at training time does not
hold for ever. Once the index holds :data:`REMEASURE_GROWTH` × the items it had when recall
was last measured, the writer measures it again at its close: :data:`~.recall.QUERIES` items
drawn as queries (half of them among the newest items, :func:`newest_from`: new exams are what
an archive is searched with, and drift shows there first), their exact top-10 by brute force
over every committed vector, and the trained spec's parameter grid up to the first point
reaching the target
(:func:`~.recall.tune_params`). The record's ``at_items`` says when; a measurement below the
target that is newer than the trained parts makes retraining due
(:func:`medcbir.indexer.retrain.retrain_due`, reason ``"recall"``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
from medcbir.indexer.recall import QUERIES
from medcbir.indexer import recall
from medcbir.indexer.store import IndexStore

log = logging.getLogger(__name__)

#: recall is re-measured when the index holds this many times the items of the last measurement.
REMEASURE_GROWTH = 1.25


#: the newest items half the re-measurement's queries are drawn from: this share of the index...
NEWEST_SHARE = 0.01
#: ...but at least this many times the queries
NEWEST_MIN = 10


def newest_from(n: int) -> int | None:
    """First row of the newest items (:data:`NEWEST_SHARE` of ``n``, at least :data:`NEWEST_MIN` ×
    the queries), or None when that is the whole index."""

    start = n - max(int(NEWEST_SHARE * n), NEWEST_MIN * QUERIES)
    return start if start > 0 else None


def measured_at(record: dict) -> int:
    """Item count of the index when ``record`` (a manifest ``recall`` record) was measured."""
    return int(record.get("at_items") or record.get("items") or 0)


def due(manifest: dict, growth: float = REMEASURE_GROWTH) -> bool:
    """Whether the trained index has grown enough since its recall was last measured."""
    record = manifest.get("recall") or {}
    return bool(manifest.get("trained") and record) and int(manifest["next_id"]) >= growth * measured_at(record)


def measure_index(index, spec: str, vectors: np.ndarray | None, target: float, recent_from: int | None = None, *,
                  n: int | None = None, exact_of=None):
    """(best grid point, points measured, queries) of ``index`` holding ``vectors`` (ids = rows, in
    the order they were added): :data:`~.recall.QUERIES` items as queries, half of them among the
    rows from ``recent_from`` on when given (:func:`~.recall.query_rows`), exact top-10 by brute
    force over all of them.

    Without ``vectors`` (an index too large to hold them all in RAM): ``n`` items, and
    ``exact_of(rows)`` → (query vectors, their exact top-10 with their own ids dropped)."""
    if vectors is not None:
        n = len(vectors)
    rows = recall.query_rows(n, recent_from=recent_from)
    if vectors is not None:
        queries, exact = np.ascontiguousarray(vectors[rows]), recall.exact_neighbours(vectors, rows)
    else:
        queries, exact = exact_of(rows)
    newest = rows >= recent_from if recent_from is not None else None
    best, tried = recall.tune_params(index, spec, queries, rows, exact, target, newest)
    return best, tried, len(rows)


def streamed_exact(store: IndexStore, rows: np.ndarray, k: int = recall.K, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """(``store``'s vectors of ``rows``, their exact top-``k`` over every committed vector, each
    query's own id dropped), reading the shards a block at a time: the brute force of a
    re-measurement without all the vectors in RAM at once."""
    queries = np.ascontiguousarray(store.embeddings(store.ids[rows]))
    best_d = np.full((len(rows), k + 1), -np.inf, dtype=np.float32)
    best_i = np.full((len(rows), k + 1), -1, dtype=np.int64)
    n = len(store.ids)
    # transform-coded shards of one codebook: searched in its rotated space (K coefficients per row,
    # nothing decoded; each query's scores shifted by its own q · μ, which leaves its ranking as is)
    book = store.codebook()
    searched, width = (book.prepare(queries)[1], book.components) if book is not None else (queries, store.dim)
    buffer = np.empty((min(block, max(n, 1)), width), dtype=np.float32)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        part = buffer[: hi - lo]
        if book is not None:
            store.fill_coefficients(part, lo, hi)
        else:
            store.fill_rows(part, lo, hi)
        d, i = faiss.knn(searched, part, min(k + 1, hi - lo), metric=faiss.METRIC_INNER_PRODUCT)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, i + lo], axis=1)
        order = np.argsort(-d, axis=1, kind="stable")[:, : k + 1]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return queries, recall.drop_self(best_i, rows, k)


def measure_committed(index_dir: Path, manifest: dict) -> dict:
    """Measure the committed index ``manifest`` describes on all its items; returns the updated
    manifest (``recall`` record, ``search_params``: the cheapest grid point reaching the target,
    else the best one), not committed. The exact neighbours are found block by block
    (:func:`streamed_exact`): the vectors are never all in RAM at once."""
    measured = manifest.get("recall") or {}
    target = float(measured.get("target") or manifest.get("target_recall") or recall.TARGET_RECALL)
    store = IndexStore.open(index_dir, verify="none", manifest=manifest)
    try:
        n = len(store.ids)
        # the newest items (rows are in commit order) get half the queries: new exams are what an archive
        # is searched with, and a uniform sample underweights what arrived lately (a new scanner's
        # images are a sliver of the items long after they are a large share of the queries)
        recent_from = newest_from(n)
        best, tried, queries = measure_index(store.faiss_index, store.index_spec, None, target, recent_from=recent_from,
                                             n=n, exact_of=lambda rows: streamed_exact(store, rows))
    finally:
        store.close()
    out = dict(manifest)
    out["search_params"] = dict(best.params)
    out["recall"] = {**measured, "recall_at_10": round(best.recall_at_10, 4), "recall_at_10_low": round(best.low, 4),
                     "held_out": False, "qps": round(best.qps, 1), "target": target,
                     "params": dict(best.params), "spec": store.index_spec, "items": n, "at_items": int(manifest["next_id"]),
                     "queries": queries, "tried": measured.get("tried", []) + [t.to_dict() for t in tried]}
    if not best.reaches(target):
        log.warning("index %s: recall@10 %.3f (95 %% lower bound %.3f) at %d items is below the target %.2f", index_dir,
                    best.recall_at_10, best.low, n, target)
    return out
