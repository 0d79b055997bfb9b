"""How similar is similar in this archive: the distribution of query–neighbour similarities.

A cosine of 0.988 means nothing on its own: with one encoder every pair of slices scores above
0.95, with another 0.5 is a close match. At index time a sample of the archive's own items is
searched as queries against every committed item, each query's own series left out (as the
searches of the viewer and the REST API do by default), and the scores of their top
:data:`K` neighbours are kept as :data:`QUANTILES` quantiles in the manifest (``"similarity"``).
A hit's *percentile* is where its score falls in that distribution: 99 means it is closer than
99 % of the neighbours a typical query of this archive gets.

The sample is re-drawn when the index has grown by :data:`GROWTH` since it was drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from medcbir.indexer.manifest import deleted_ids
from medcbir.indexer.shard import read_columns, read_embeddings, read_ids

#: queries drawn from the index
QUERIES = 400
#: neighbours per query kept in the distribution
K = 10
#: candidates searched (all items up to this many; a uniform sample above)
MAX_CANDIDATES = 200_000
#: quantiles stored: 0, 0.5, ..., 100 %
QUANTILES = 201
#: re-drawn when the index holds this many times the items of the last sample
GROWTH = 1.25


def due(manifest: dict) -> bool:
    """Whether the manifest lacks a similarity sample or the index grew by :data:`GROWTH` since."""
    n = int(manifest.get("next_id", 0))
    record = manifest.get("similarity") or {}
    return n > 1 and (not record or n >= GROWTH * int(record.get("at_items", 0)))


def sample_distribution(embeddings: np.ndarray, series: np.ndarray, live: np.ndarray | None = None, seed: int = 0) -> dict | None:
    """The ``"similarity"`` record of ``embeddings`` (N×D, L2-normalised) whose rows belong to
    ``series`` (N labels); None when no query has a neighbour outside its own series.

    Returns:
        ``{"quantiles": [score at 0 %, 0.5 %, ..., 100 %], "queries", "k", "candidates", "pairs"}``.
    """
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(live) if live is not None else np.arange(len(embeddings))
    if len(rows) < 2:
        return None
    candidates = rows if len(rows) <= MAX_CANDIDATES else np.sort(rng.choice(rows, MAX_CANDIDATES, replace=False))
    queries = rows if len(rows) <= QUERIES else np.sort(rng.choice(rows, QUERIES, replace=False))
    cand = np.asarray(embeddings[candidates], dtype=np.float32)
    cand_series = np.asarray(series)[candidates]
    scores = []
    for start in range(0, len(queries), 64):
        q_rows = queries[start:start + 64]
        sims = np.asarray(embeddings[q_rows], dtype=np.float32) @ cand.T
        sims[np.asarray(series)[q_rows][:, None] == cand_series[None, :]] = -np.inf  # own series (and self)
        k = min(K, sims.shape[1])
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        scores.append(top[np.isfinite(top)])
    pairs = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if pairs.size == 0:
        return None
    quantiles = np.quantile(pairs.astype(np.float64), np.linspace(0, 1, QUANTILES))
    return {"quantiles": [round(float(v), 6) for v in quantiles], "queries": int(len(queries)), "k": K,
            "candidates": int(len(candidates)), "pairs": int(pairs.size)}


def sample_committed(index_dir: Path, manifest: dict, seed: int = 0) -> dict | None:
    """:func:`sample_distribution` over the shards ``manifest`` lists (tombstones left out): the
    candidates (all live items up to :data:`MAX_CANDIDATES`, else a uniform sample) are the only
    embeddings read; queries are drawn among them."""

    shards = manifest.get("shards") or []
    if not shards:
        return None
    paths = [Path(index_dir) / entry["file"] for entry in shards]
    per_shard = [read_ids(path) for path in paths]
    counts = [len(part) for part in per_shard]
    ids = np.concatenate(per_shard)
    live = np.flatnonzero(~np.isin(ids, deleted_ids(index_dir, manifest, verify=False)))
    if len(live) < 2:
        return None
    rng = np.random.default_rng(seed)
    rows = live if len(live) <= MAX_CANDIDATES else np.sort(rng.choice(live, MAX_CANDIDATES, replace=False))
    vectors, series, offset = [], [], 0
    for path, count in zip(paths, counts):
        local = rows[(rows >= offset) & (rows < offset + count)] - offset
        if len(local):
            vectors.append(np.asarray(read_embeddings(path, local), dtype=np.float32))
            series.append(np.asarray(read_columns(path, ["series_instance_uid"])["series_instance_uid"])[local])
        offset += count
    record = sample_distribution(np.concatenate(vectors), np.concatenate(series), seed=seed)
    if record is not None:
        record["at_items"] = int(manifest.get("next_id", len(ids)))
    return record


def percentile(score: float, record: dict | None) -> float | None:
    """Where ``score`` falls in the archive's sampled distribution, in percent (0–100), or None
    without a sample."""
    if not record or not record.get("quantiles"):
        return None
    q = np.asarray(record["quantiles"], dtype=np.float64)
    levels = np.linspace(0, 100, len(q))
    # flat stretches of q (many equal scores): take the middle of the levels they span
    lo = np.searchsorted(q, score, side="left")
    hi = np.searchsorted(q, score, side="right")
    if hi > lo:
        return round(float((levels[lo] + levels[hi - 1]) / 2), 1)
    return round(float(np.interp(score, q, levels)), 1)
