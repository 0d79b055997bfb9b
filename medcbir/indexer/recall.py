"""Recall of an approximate index measured on the index's own embeddings, and ``auto`` tuning.

An approximate FAISS index can silently return the wrong neighbours: IVF-PQ reaches recall@10
0.99 on clustered embeddings but 0.01 on embeddings that all sit in one narrow cone (a random
encoder's embeddings of one archive have pairwise cosine 0.994–1.000). So recall is measured,
on the data the index holds, whenever an index is trained:

- queries are :data:`QUERIES` items drawn from the vectors themselves (they are items: an
  indexed query is the commonest search); each query's own id is dropped from both the exact
  and the approximate result lists, so recall@10 is over *other* items, as for a held-out query;
- the exact top-K is brute force (``faiss.knn``, inner product) over the same vectors;
- recall@10 = mean over queries of |approximate top-10 ∩ exact top-10| / 10, and QPS is the
  batch's queries per second.

``auto`` (:func:`choose`) tries specs in order of cost — IVF-PQ with re-ranking, IVF-SQ8 with
re-ranking (a finer code), HNSW, exact — and for each a small grid of search parameters; the
first spec with a grid point reaching the target wins, with its cheapest such point.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

log = logging.getLogger(__name__)

#: recall@10 ``auto`` must reach on the index's own embeddings (``--target-recall``).
TARGET_RECALL = 0.95
K = 10
#: items drawn as queries for a measurement.
QUERIES = 200
#: spec choice works on at most this many of the training sample's vectors (tuning cost).
TUNE_ITEMS = 50_000

#: search-parameter grids per kind of spec, cheapest first.
GRIDS = {
    "ivf_refine": [{"nprobe": p, "k_factor": f} for p in (8, 16, 32, 64) for f in (4, 16, 64)],
    "ivf": [{"nprobe": p} for p in (8, 16, 32, 64, 128)],
    "hnsw": [{"efSearch": e} for e in (64, 128, 256, 512)],
    "flat": [{}],
}


@dataclass
class Measurement:
    """Recall@10 and speed of one (spec, parameters) point on one set of vectors."""

    spec: str
    params: dict
    recall_at_10: float
    qps: float

    def to_dict(self) -> dict:
        return {"spec": self.spec, "params": dict(self.params), "recall_at_10": round(self.recall_at_10, 4), "qps": round(self.qps, 1)}


@dataclass
class Choice:
    """What :func:`choose` picked, and everything it tried."""

    spec: str
    params: dict
    recall_at_10: float
    qps: float
    target: float
    items: int
    queries: int
    seconds: float
    tried: list = field(default_factory=list)

    def record(self) -> dict:
        """The manifest's ``recall`` record."""
        return {
            "recall_at_10": round(self.recall_at_10, 4),
            "qps": round(self.qps, 1),
            "target": self.target,
            "params": dict(self.params),
            "spec": self.spec,
            "items": self.items,
            "queries": self.queries,
            "tuning_seconds": round(self.seconds, 2),
            "tried": [m.to_dict() for m in self.tried],
        }


def query_rows(n: int, queries: int = QUERIES, seed: int = 0) -> np.ndarray:
    """Sorted rows of ``n`` vectors used as queries (all of them when ``n`` ≤ ``queries``)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, queries), replace=False))


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int = K) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own id (rows of ``k + 1`` ids in)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, own) in enumerate(zip(ids, self_ids)):
        kept = row[row != own][:k]
        out[r, : len(kept)] = kept
    return out


def exact_neighbours(vectors: np.ndarray, rows: np.ndarray, k: int = K) -> np.ndarray:
    """Brute-force top-``k`` ids (inner product) of ``vectors[rows]`` among ``vectors``, self dropped."""
    _, ids = faiss.knn(np.ascontiguousarray(vectors[rows]), vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return drop_self(ids, rows, k)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found ∩ exact| / k (``-1`` padding never counts)."""
    k = exact.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) for a, b in zip(found, exact)]
    return float(np.mean(hits) / k) if hits else 1.0


def measure(index: faiss.Index, queries: np.ndarray, self_ids: np.ndarray, exact: np.ndarray, params: dict, spec: str = "") -> Measurement:
    """Recall@10 and QPS of ``index`` searched with ``params`` (nprobe, k_factor, efSearch)."""
    from medcbir.indexer.faiss_index import search_parameters

    k = exact.shape[1]
    sp = search_parameters(index, params) if params else None
    start = time.perf_counter()
    _, ids = index.search(queries, k + 1, params=sp) if sp is not None else index.search(queries, k + 1)
    seconds = max(time.perf_counter() - start, 1e-9)
    return Measurement(spec, dict(params), recall_at_k(drop_self(ids, self_ids, k), exact), len(queries) / seconds)


def grid_for(spec: str) -> list[dict]:
    from medcbir.indexer.faiss_index import is_flat, split_refine

    if is_flat(spec):
        return GRIDS["flat"]
    base, refine = split_refine(spec)
    if "HNSW" in base.upper():
        return GRIDS["hnsw"]
    if "IVF" in base.upper():
        return GRIDS["ivf_refine"] if refine else GRIDS["ivf"]
    return [{}]


def candidates(dim: int, n: int) -> list[str]:
    """``auto``'s search order for ``n`` vectors of ``dim``: IVF-PQ, IVF-SQ8, HNSW, exact.

    Why this order: IVF-PQ stores 1/8 of the vectors' bytes per code and is the fastest when
    its codes separate the neighbours; SQ8 keeps 1 byte per dimension (a finer code that holds
    where PQ's 8-dimension sub-codebooks cannot resolve tiny distance gaps); HNSW needs no
    quantisation at all (a graph over the exact vectors) at ~2× the memory of the vectors;
    exact search always reaches recall 1.
    """
    from medcbir.indexer.faiss_index import auto_nlist, auto_spec

    nlist = auto_nlist(n)
    return [auto_spec(dim, nlist), f"IVF{nlist},SQ8,Refine(Flat)", "HNSW32,Flat", "Flat"]


def tune_params(index: faiss.Index, spec: str, queries: np.ndarray, self_ids: np.ndarray, exact: np.ndarray, target: float) -> tuple[Measurement, list[Measurement]]:
    """The cheapest grid point of ``spec`` reaching ``target`` (else the one with the best recall).

    Cheapest is the first in grid order (fewest lists probed, then shallowest re-rank, then
    smallest efSearch): the work per query FAISS does, not the measured QPS of 200 queries,
    which on a shared machine is noise (measured: 1,100–6,200 QPS for equal-cost points).
    """
    tried = [measure(index, queries, self_ids, exact, params, spec) for params in grid_for(spec)]
    ok = [m for m in tried if m.recall_at_10 >= target]
    best = ok[0] if ok else max(tried, key=lambda m: (m.recall_at_10, m.qps))
    return best, tried


def choose(vectors: np.ndarray, target: float = TARGET_RECALL, specs: list[str] | None = None, seed: int = 0) -> tuple[Choice, faiss.Index | None]:
    """Pick the cheapest spec and parameters reaching ``target`` recall@10 on ``vectors``.

    Args:
        vectors: N×D float32 L2-normalised embeddings (the training sample of the index).
        target: recall@10 to reach.
        specs: specs to try in order (default :func:`candidates`).
        seed: query sampling seed.

    Returns:
        (choice, trained): ``trained`` is the chosen spec's trained, empty factory index
        (None for exact ``Flat``), trained on ``vectors`` (at most :data:`TUNE_ITEMS` of them
        are used to measure).
    """
    from medcbir.indexer.faiss_index import is_flat, train

    start = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    tune = vectors if n <= TUNE_ITEMS else vectors[np.sort(rng.choice(n, TUNE_ITEMS, replace=False))]
    rows = query_rows(len(tune), seed=seed)
    queries = np.ascontiguousarray(tune[rows])
    exact = exact_neighbours(tune, rows)
    tried: list[Measurement] = []
    best, trained = None, None
    for spec in specs or candidates(dim, n):
        if is_flat(spec):
            flat = faiss.IndexFlatIP(dim)
            flat.add(tune)
            best, trained = measure(flat, queries, rows, exact, {}, "Flat"), None
            tried.append(best)
            break
        try:
            trained = train(spec, dim, vectors)
        except RuntimeError as exc:  # too few points for this spec: try the next one
            log.info("auto: %s cannot be trained on %d items (%s)", spec, n, str(exc).splitlines()[-1])
            continue
        probe = faiss.clone_index(trained)
        probe.add(tune)
        best, points = tune_params(probe, spec, queries, rows, exact, target)
        tried.extend(points)
        del probe
        if best.recall_at_10 >= target:
            break
        log.info("auto: %s reaches recall@10 %.3f < %.2f on this data; trying a finer index", spec, best.recall_at_10, target)
    if best is None:
        raise RuntimeError(f"none of {specs or candidates(dim, n)} can be trained on {n} items")
    choice = Choice(best.spec, best.params, best.recall_at_10, best.qps, float(target), int(len(tune)), int(len(rows)), time.perf_counter() - start, tried)
    return choice, trained
