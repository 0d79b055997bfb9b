"""Leave-one-out retrieval evaluation of an index against ground-truth labels.

Protocol (what ``evaluate`` measures, precisely):

- **Labels**: ``labels.csv`` with columns ``sop_instance_uid,frame,label``. Rows whose item is
  not in the index are ignored and counted (``n_labels_unknown``), as are rows of deleted
  items (``n_labels_deleted``). If a key appears twice its last label wins.
- **Searchable set**: the labelled, live items of the index (unlabelled items would count as
  wrong answers for every query, measuring the labelling rather than the encoder).
- **Queries**: every item of the searchable set (or a seeded sample), with its *stored*
  embedding, searched against the searchable set minus itself, minus — by default — every item
  of its patient (``exclude="same-patient"``: neighbouring slices of one scan are near
  duplicates and would inflate every metric) or of its study (``"same-study"``).
  The exclusions are FAISS selectors; the query itself (one known item) is removed by asking
  for K+1 neighbours and dropping it when the exclusion does not already remove it.
- **Metrics** (``medcbir.engine.metrics``): ``map_at_k`` = mean over queries of
  (1/K)·Σ_k P@k; ``ap_at_k`` = mean of Σ_k P@k·rel_k / min(K, R) with R the relevant items in
  the query's searchable set; ``precision_at_k``; ``knn_accuracy`` (majority vote of the K
  neighbours, ties to the label ranked first); each also ``per_class`` by query label.
- **Not applied here**: the search options a reader gets (``per_series``, ``group_by``; see
  ``medcbir.engine.grouping``). Every labelled slice competes, so MAP@K figures stay comparable
  with those published before these options existed.
- **recall_vs_exact** (approximate indexes only): mean over queries of |approx ∩ exact| / |exact|
  of the K neighbour ids, exact = brute-force inner product over the same stored embeddings
  with the same selectors.
"""

from __future__ import annotations

import faiss
import numpy as np

from medcbir.engine.filters import check_exclude
from medcbir.engine.metrics import ap_at_k, knn_vote, map_at_k, precision_at_k
from medcbir.errors import ConfigError
from medcbir.imaging.labels import read_labels

EXCLUDE_COLUMN = {"same-patient": "patient_pseudonym", "same-study": "study_instance_uid", "same-series": "series_instance_uid"}


def _summary(relevant, n_relevant, predicted, truth) -> dict:
    return {
        "n_queries": int(len(truth)),
        "map_at_k": float(map_at_k(relevant).mean()) if len(truth) else 0.0,
        "ap_at_k": float(ap_at_k(relevant, n_relevant).mean()) if len(truth) else 0.0,
        "precision_at_k": float(precision_at_k(relevant).mean()) if len(truth) else 0.0,
        "knn_accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
    }


def evaluate(engine, labels_csv, k: int = 5, exclude: str = "same-patient", queries="all", seed: int = 0) -> dict:
    """Leave-one-out MAP@K, AP@K, precision@K and kNN accuracy over the labelled items.

    Args:
        engine: an open :class:`~medcbir.engine.Engine`.
        labels_csv: path of ``sop_instance_uid,frame,label``.
        k: neighbours per query (K).
        exclude: ``"same-patient"`` (default), ``"same-study"`` or ``"none"``; the query item
            itself is always excluded.
        queries: ``"all"`` labelled live items, or an int n for a seeded random sample of n.
        seed: the sample's seed.

    Returns:
        ``{"k", "exclude", "n_queries", "map_at_k", "ap_at_k", "precision_at_k",
        "knn_accuracy", "per_class": {label: {...}}, ...}`` plus ``recall_vs_exact`` when the
        index is approximate, and the counts described in the module docstring.
    """
    check_exclude(exclude)
    k = int(k)
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, got {k}")
    engine.require_items()
    table = read_labels(labels_csv)
    uids, frames, labels = list(table.uids), list(table.frames), list(table.labels)
    found = engine.lookup.find(uids, frames) if uids else np.zeros(0, np.int64)
    n_unknown = int(np.count_nonzero(found < 0))
    names = sorted(set(labels))
    code_of = {name: c for c, name in enumerate(names)}
    label_of_id = np.full(engine.id_range, -1, dtype=np.int64)  # last label of a key wins
    for id_, name in zip(found.tolist(), labels):
        if id_ >= 0:
            label_of_id[id_] = code_of[name]
    labelled = label_of_id >= 0
    n_deleted = int(np.count_nonzero(labelled & ~engine.live))
    searchable = labelled & engine.live
    query_ids = np.flatnonzero(searchable)
    if queries != "all":
        n = int(queries)
        if n < len(query_ids):
            query_ids = np.sort(np.random.default_rng(seed).choice(query_ids, size=n, replace=False))
    result: dict = {
        "k": k,
        "exclude": exclude,
        "n_queries": int(len(query_ids)),
        "searchable": int(np.count_nonzero(searchable)),
        "n_labels_unknown": n_unknown,
        "n_labels_deleted": n_deleted,
        "index_spec": str(getattr(engine.store, "index_spec", "")),
        "exact": bool(engine.exact),
    }
    if not len(query_ids):
        raise ConfigError(f"no labelled item of {labels_csv} is in the index ({n_unknown} unknown, {n_deleted} deleted)")

    vectors = np.ascontiguousarray(engine.embeddings(query_ids), dtype=np.float32)
    groups = _groups(engine, query_ids, exclude)
    _, approx = _leave_one_out(engine, vectors, query_ids, k, searchable, groups)
    truth = label_of_id[query_ids]
    neighbour_labels = np.where(approx >= 0, label_of_id[np.maximum(approx, 0)], -1)
    relevant = neighbour_labels == truth[:, None]
    n_relevant = _n_relevant(engine, query_ids, truth, label_of_id, searchable, groups, len(names))
    predicted = knn_vote(neighbour_labels)

    result.update(_summary(relevant, n_relevant, predicted, truth))
    result["n_queries_without_relevant"] = int(np.count_nonzero(n_relevant == 0))
    result["per_class"] = {
        name: _summary(relevant[truth == c], n_relevant[truth == c], predicted[truth == c], truth[truth == c])
        for c, name in enumerate(names)
        if np.any(truth == c)
    }
    if not engine.exact:
        result["recall_vs_exact"] = _recall_vs_exact(engine, vectors, query_ids, k, searchable, groups, approx)
    return result


def _groups(engine, query_ids: np.ndarray, exclude: str) -> dict:
    """{None | (column, value): [query positions]} — one FAISS search per exclusion value."""
    column = EXCLUDE_COLUMN.get(exclude)
    if column is None:
        return {None: list(range(len(query_ids)))}
    values = engine.meta_column(column, query_ids)
    groups: dict = {}
    for pos, value in enumerate(values):
        groups.setdefault((column, value) if value else None, []).append(pos)
    return groups


def _leave_one_out(engine, vectors, query_ids, k, searchable, groups, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-K of each query among ``searchable`` minus its exclusion group and minus itself."""
    # No more than the searchable items can come back: a K beyond them is padded (-1), not fetched.
    fetch = min(k + 1, max(1, int(np.count_nonzero(searchable))))
    scores, ids = engine.search_groups(vectors, fetch, searchable, groups, index=index)
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    for q, own in enumerate(query_ids.tolist()):
        keep = ids[q] != own
        if keep.all() and fetch == k + 1:
            keep[-1] = False  # self was not among the K+1 (excluded, or missed): drop the extra
        kept = min(int(np.count_nonzero(keep)), k)
        out_s[q, :kept], out_i[q, :kept] = scores[q][keep][:kept], ids[q][keep][:kept]
    return out_s, out_i


def _n_relevant(engine, query_ids, truth, label_of_id, searchable, groups, n_labels) -> np.ndarray:
    """R per query: searchable items sharing its label, minus its exclusion group and itself."""
    totals = np.bincount(label_of_id[searchable], minlength=n_labels)
    out = totals[truth].astype(np.int64) - 1  # the query itself
    for key, members in groups.items():
        if key is None:
            continue
        excluded = engine.exclusion_mask(*key) & searchable
        per_label = np.bincount(label_of_id[excluded], minlength=n_labels)
        members = np.asarray(members)
        # the query is inside its own exclusion group: do not remove it twice
        out[members] -= per_label[truth[members]] - 1
    return out


def _recall_vs_exact(engine, vectors, query_ids, k, searchable, groups, approx) -> float:
    ids = np.flatnonzero(searchable).astype(np.int64)
    exact_index = faiss.IndexIDMap2(faiss.IndexFlatIP(engine.dim))
    exact_index.add_with_ids(np.ascontiguousarray(engine.embeddings(ids), dtype=np.float32), ids)
    _, exact = _leave_one_out(engine, vectors, query_ids, k, searchable, groups, index=exact_index)
    recalls = []
    for a, e in zip(approx, exact):
        e = set(e[e >= 0].tolist())
        if e:
            recalls.append(len(e & set(a[a >= 0].tolist())) / len(e))
    return float(np.mean(recalls)) if recalls else 1.0
