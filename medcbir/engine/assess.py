"""The label-free quality of an index: agreement@K of its stored embeddings (``medcbir assess``).

The score is :func:`medcbir.encoders.agreement.agreement` (what it measures and why is there);
this module feeds it from an index: the live items' series, slice positions and patients from the
metadata, each query's K nearest neighbours among other patients from the index's own search
(approximate indexes are assessed as they search), a seeded sample of queries on large indexes.
Patients are the pseudonyms when the index has them, else the studies (an index built without
an archive key holds no pseudonym: exams then stand in for patients).

Example:
    >>> with Engine.open("index/") as engine:                     # doctest: +SKIP
    ...     assess(engine)["agreement_at_k"]
"""

from __future__ import annotations

import numpy as np

from medcbir.encoders.agreement import K, agreement
from medcbir.engine.evaluate import _leave_one_out
from medcbir.errors import ConfigError

MAX_QUERIES = 2000


def assess(engine, k: int = K, queries: int | str = MAX_QUERIES, seed: int = 0) -> dict:
    """agreement@K of an open index.

    Args:
        engine: an open :class:`~medcbir.engine.Engine`.
        k: neighbours per query.
        queries: how many live items to use as queries (a seeded sample), or ``"all"``.
        seed: the sample's seed.

    Returns:
        ``{"agreement_at_k", "k", "n_queries", "coverage", "items", "patients", "exclude",
        "fingerprint", "exact"}``; ``coverage`` is the fraction of queries that had a link the
        score could judge (0 for an archive of single images: then the score says nothing).
    """
    k = int(k)
    if k < 1:
        raise ConfigError(f"k must be ≥ 1, not {k}")
    ids = np.flatnonzero(engine.live)
    if len(ids) < 2:
        raise ConfigError(f"the index has {len(ids)} live item(s); assessing it needs neighbours")
    column = "patient_pseudonym" if any(engine.meta_column("patient_pseudonym", ids[:1000])) else "study_instance_uid"
    patient = np.array(engine.meta_column(column, ids), dtype=object).astype(str)
    series = np.array(engine.meta_column("series_instance_uid", ids), dtype=object).astype(str)
    position = np.array(engine.meta_column("slice_position", ids), dtype=np.float64)
    rows = np.arange(len(ids))
    if queries != "all" and int(queries) < len(ids):
        rows = np.sort(np.random.default_rng(seed).choice(len(ids), size=int(queries), replace=False))
    query_ids = ids[rows]
    groups: dict = {}
    for pos, value in enumerate(patient[rows].tolist()):
        groups.setdefault((column, value) if value else None, []).append(pos)
    vectors = np.ascontiguousarray(engine.embeddings(query_ids), dtype=np.float32)
    _, found = _leave_one_out(engine, vectors, query_ids, k, engine.live, groups)
    row_of = np.full(engine.id_range, -1, dtype=np.int64)
    row_of[ids] = np.arange(len(ids))
    neighbours = np.where(found >= 0, row_of[np.maximum(found, 0)], -1)
    result = agreement(None, patient, series, position, k=k, queries=rows, neighbours=neighbours)
    return {
        **result.to_dict(),
        "items": int(len(ids)),
        "patients": int(len(np.unique(patient))),
        "exclude": column,
        "fingerprint": engine.store.encoder_info.get("fingerprint", ""),
        "exact": bool(engine.exact),
    }
