"""Recall of an approximate index measured on the index's own embeddings, and ``auto`` tuning.

An approximate FAISS index can silently return the wrong neighbours: IVF-PQ that finds nearly
all true neighbours of clustered embeddings finds almost none of embeddings that all sit in one
narrow cone (as a random encoder's embeddings of one archive do; figures in benchmarks/RESULTS.md,
"Development measurements"). So recall is measured, on the data the index holds, whenever an
index is trained:

- queries are :data:`QUERIES` items drawn from the vectors themselves. When ``auto`` chooses
  (:func:`choose`) they are held out: the candidates are trained and filled without them, so they
  are what a new image is to the index (items that are in the index, and in the training of
  its centroids, overstate the recall new queries get). When a built
  index is re-measured (:mod:`.remeasure`) the queries are in it: each query's own id is dropped
  from both result lists, and the re-ranking depth is scaled by k / (k + 1), so that the k + 1
  candidates searched for do not buy a deeper re-rank than a real top-k query gets;
- the exact top-K is brute force (``faiss.knn``, inner product) over the indexed vectors;
- recall@10 = mean over queries of |approximate top-10 ∩ exact top-10| / 10, and QPS is the
  batch's queries per second; a grid point *reaches* the target when the one-sided 95 % lower
  confidence bound of that mean (:data:`Z_LOW` standard errors below it, over the queries) does,
  so that the few hundred queries of a measurement do not pick parameters that reach the target
  only by luck (two such estimates of the same index differ).

``auto`` (:func:`choose`) tries specs in order of cost — IVF-PQ with re-ranking, IVF-SQ8 with
re-ranking (a finer code), HNSW, exact — and for each a small grid of search parameters; the
first spec with a grid point reaching the target wins, with its cheapest such point.

Tuning is kept cheap (goal: ≤ 10 % of the build time), because most of its cost would be
training that a build without tuning does once anyway:

- the IVF candidates share one coarse quantiser: the IVF centroids (k-means over the whole
  training sample, the dominant cost) are trained once per ``nlist`` and copied into every IVF
  candidate, which then trains only its code (PQ codebooks, SQ ranges) — on at most
  :data:`CODE_TRAIN` vectors (256 PQ centroids need far fewer than 100k points);
- the exact top-K of the :data:`QUERIES` query items is computed once and reused by every
  candidate and grid point;
- a candidate's grid stops at its first (cheapest) point reaching the target, and the candidate
  list stops at the first spec that reaches it.

:class:`Choice` records ``train_seconds`` (training the returned index: what an untuned build
spends) apart from ``tuning_seconds`` (everything else ``choose`` did).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from medcbir.indexer import faiss_index
from medcbir.indexer.compression import bytes_per_item, compact_candidates, fit_projection, principal_axes
from medcbir.indexer.faiss_index import (auto_nlist, auto_spec, chain, faiss_part, is_flat, reranks_from_shards, search_parameters, shared_ivf,
                                         split_projection, split_refine)
from medcbir.indexer.rerank import from_array
from medcbir.indexer.shard import Decoder, sq_encode
from medcbir.indexer.transform_codec import CrossFit, is_transform

log = logging.getLogger(__name__)

#: recall@10 ``auto`` must reach on the index's own embeddings (``--target-recall``).
TARGET_RECALL = 0.95
K = 10
#: items drawn as queries for a measurement.
QUERIES = 200
#: a grid point reaches the target when mean recall − Z_LOW standard errors does (one-sided 95 %).
Z_LOW = 1.645
#: spec choice works on at most this many of the training sample's vectors (tuning cost).
TUNE_ITEMS = 50_000
#: codes (PQ codebooks, SQ ranges) are trained on at most this many vectors (128 per PQ centroid).
CODE_TRAIN = 32_768

#: search-parameter grids per kind of spec, cheapest first.
GRIDS = {
    "ivf_refine": [{"nprobe": p, "k_factor": f} for p in (8, 16, 32, 64, 128) for f in (4, 16, 64)],
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
    #: the one-sided 95 % lower confidence bound of ``recall_at_10`` over the queries
    recall_low: float | None = None

    @property
    def low(self) -> float:
        return self.recall_at_10 if self.recall_low is None else self.recall_low

    def reaches(self, target: float) -> bool:
        return self.low >= target

    def to_dict(self) -> dict:
        return {"spec": self.spec, "params": dict(self.params), "recall_at_10": round(self.recall_at_10, 4),
                "recall_at_10_low": round(self.low, 4), "qps": round(self.qps, 1)}


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
    #: of ``seconds``: training the returned index (coarse quantiser + its code), which a build
    #: without tuning does too; the rest is tuning.
    train_seconds: float = 0.0
    #: the lower confidence bound the target is checked against (see the module docstring)
    recall_low: float | None = None
    #: whether the queries were held out of the measured index (False: too few items to spare any)
    held_out: bool = True

    def record(self) -> dict:
        """The manifest's ``recall`` record."""
        return {
            "recall_at_10": round(self.recall_at_10, 4),
            "recall_at_10_low": round(self.recall_at_10 if self.recall_low is None else self.recall_low, 4),
            "held_out": self.held_out,
            "qps": round(self.qps, 1),
            "target": self.target,
            "params": dict(self.params),
            "spec": self.spec,
            "items": self.items,
            "queries": self.queries,
            "choose_seconds": round(self.seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "tuning_seconds": round(max(0.0, self.seconds - self.train_seconds), 2),
            "tried": [m.to_dict() for m in self.tried],
        }


def query_rows(n: int, queries: int = QUERIES, seed: int = 0, recent_from: int | None = None) -> np.ndarray:
    """Sorted rows of ``n`` vectors used as queries (all of them when ``n`` ≤ ``queries``).

    With ``recent_from`` (rows ≥ it are the newest items), half the queries are drawn from those
    rows and half from all rows: an archive drifts (new scanners, new protocols), new kinds of
    images land in lists trained before they existed, and a uniform sample, dominated by the old
    items, would not see the recall they get.
    """
    rng = np.random.default_rng(seed)
    m = min(n, queries)
    if recent_from is None or not 0 < recent_from < n or m == n:
        return np.sort(rng.choice(n, size=m, replace=False))
    recent = rng.choice(np.arange(recent_from, n), size=min(n - recent_from, m // 2), replace=False)
    rest = np.setdiff1d(np.arange(n), recent, assume_unique=True)
    return np.sort(np.concatenate([recent, rng.choice(rest, size=m - len(recent), replace=False)]))


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


def reached(record: dict) -> float | None:
    """What a manifest ``recall`` record reached: its lower confidence bound, or its mean when the
    record predates the bound (None when nothing was measured)."""
    value = record.get("recall_at_10_low", record.get("recall_at_10"))
    return None if value is None else float(value)


def recall_per_query(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|found ∩ exact| / k per row (``-1`` padding never counts)."""
    k = exact.shape[1]
    return np.array([len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / k for a, b in zip(found, exact)], dtype=np.float64)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found ∩ exact| / k (``-1`` padding never counts)."""
    per = recall_per_query(found, exact)
    return float(per.mean()) if len(per) else 1.0


def lower_bound(per_query: np.ndarray, z: float = Z_LOW) -> float:
    """One-sided lower confidence bound of the mean recall: mean − z · sd / √n."""
    n = len(per_query)
    if n < 2:
        return float(per_query.mean()) if n else 1.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / np.sqrt(n))


def measure(index: faiss.Index, queries: np.ndarray, self_ids: np.ndarray | None, exact: np.ndarray, params: dict, spec: str = "",
            newest: np.ndarray | None = None) -> Measurement:
    """Recall@10 (mean and lower bound) and QPS of ``index`` searched with ``params`` (nprobe,
    k_factor, efSearch). ``self_ids``: the queries' own ids when they are in ``index`` (dropped,
    with the re-rank depth scaled to what a top-k query gets), None for held-out queries.
    ``newest``: a mask of the queries that are the newest items; the lower bound is then the lower
    of the two groups' (the target must hold for new exams, not only on average over the archive,
    whose older items the quantiser fits better)."""

    k = exact.shape[1]
    wanted = k if self_ids is None else k + 1
    knobs = dict(params)
    if self_ids is not None and "k_factor" in knobs:
        knobs["k_factor"] = float(knobs["k_factor"]) * k / (k + 1)  # k_factor·(k+1) candidates = k_factor·k
    sp = search_parameters(index, knobs) if knobs else None
    start = time.perf_counter()
    _, ids = index.search(queries, wanted, params=sp) if sp is not None else index.search(queries, wanted)
    seconds = max(time.perf_counter() - start, 1e-9)
    per = recall_per_query(ids if self_ids is None else drop_self(ids, self_ids, k), exact)
    mean = float(per.mean()) if len(per) else 1.0
    low = lower_bound(per)
    if newest is not None and int(np.sum(newest)) >= 2:
        low = min(low, lower_bound(per[newest]))
    return Measurement(spec, dict(params), mean, len(queries) / seconds, low)


def grid_for(spec: str) -> list[dict]:

    if is_flat(spec):
        return GRIDS["flat"]
    base, refine = split_refine(spec)
    if "HNSW" in base.upper():
        return GRIDS["hnsw"]
    if "IVF" in base.upper():
        grid = GRIDS["ivf_refine"] if refine else GRIDS["ivf"]
        match = re.search(r"IVF(\d+)", base.upper())
        top = max(p["nprobe"] for p in grid)
        if match and int(match[1]) // 8 > top:
            # more lists than the grid was made for (auto's lists grow with the archive): probe up
            # to the same 1/8 of them, doubling, so the target stays reachable
            factors = sorted({p.get("k_factor") for p in grid if "k_factor" in p})
            extra, p = [], top * 2
            while p <= int(match[1]) // 8:
                extra += [{"nprobe": p, "k_factor": f} for f in factors] if factors else [{"nprobe": p}]
                p *= 2
            grid = grid + extra
        return grid
    return [{}]


def candidates(dim: int, n: int, budget: float | None = None, items: int | None = None) -> list[str]:
    """``auto``'s search order for ``n`` vectors of ``dim``: IVF-PQ, IVF-SQ8, HNSW, exact.

    Why this order: IVF-PQ stores 1/8 of the vectors' bytes per code and is the fastest when
    its codes separate the neighbours; SQ8 keeps 1 byte per dimension (a finer code that holds
    where PQ's 8-dimension sub-codebooks cannot resolve tiny distance gaps); HNSW needs no
    quantisation at all (a graph over the exact vectors) at ~2× the memory of the vectors;
    exact search always reaches recall 1.

    ``n``: training vectors; ``items``: the index's items (default ``n``), which set the number
    of inverted lists (:func:`~medcbir.indexer.faiss_index.auto_nlist`).

    With ``budget`` (bytes of RAM per item for search, ``--memory-budget``): the projected chains
    of :func:`~medcbir.indexer.compression.compact_candidates` come first (cheapest search first), then
    the ones above; only those whose :func:`~medcbir.indexer.compression.bytes_per_item` fits are kept.
    """
    nlist = auto_nlist(items if items is not None else n, sample=n)
    full = [auto_spec(dim, nlist), f"IVF{nlist},SQ8,Refine(Flat)", "HNSW32,Flat", "Flat"]
    if budget is None:
        return full
    return [spec for spec in compact_candidates(dim, nlist) + full if bytes_per_item(spec, dim) <= float(budget)]


def tune_params(index: faiss.Index, spec: str, queries: np.ndarray, self_ids: np.ndarray, exact: np.ndarray, target: float,
                newest: np.ndarray | None = None) -> tuple[Measurement, list[Measurement]]:
    """The cheapest grid point of ``spec`` reaching ``target`` (else the one with the best recall).

    Cheapest is the first in grid order (fewest lists probed, then shallowest re-rank, then
    smallest efSearch): the work per query FAISS does, not the measured QPS of 200 queries,
    which on a shared machine is noise (equal-cost points measured far apart).
    The grid stops at that point: the costlier points after it are not measured.
    """
    tried = []
    for params in grid_for(spec):
        tried.append(measure(index, queries, self_ids, exact, params, spec, newest))
        if tried[-1].reaches(target):
            return tried[-1], tried
    return max(tried, key=lambda m: (m.low, m.recall_at_10, m.qps)), tried


class SharedTraining:
    """Trains candidate specs on one training sample, sharing what they have in common.

    IVF candidates whose base is a plain IVF index (no pre-transform) get the coarse centroids
    trained once per ``nlist`` (an ``IVF{nlist},Flat`` training: the same k-means, same seed, as
    each candidate's own training would run) and train only their code on :data:`CODE_TRAIN`
    vectors. Other specs are trained as :func:`~medcbir.indexer.faiss_index.train` does.
    """

    def __init__(self, vectors: np.ndarray, seed: int = 0, code_train: int | None = None) -> None:
        self.vectors = vectors
        limit = CODE_TRAIN if code_train is None else int(code_train)
        n = len(vectors)
        rng = np.random.default_rng(seed + 1)
        self.code_sample = vectors if n <= limit else np.ascontiguousarray(vectors[np.sort(rng.choice(n, limit, replace=False))])
        self._centroids: dict[int, np.ndarray] = {}
        self.coarse_seconds: dict[int, float] = {}
        self._seed, self._code_train = seed, code_train
        self._projected: dict[int, tuple] = {}
        self._axes: np.ndarray | None = None  # d → (projection, SharedTraining of the projected sample, seconds)

    def centroids(self, dim: int, nlist: int) -> np.ndarray:

        if nlist not in self._centroids:
            start = time.perf_counter()
            coarse = faiss_index.train(f"IVF{nlist},Flat", dim, self.vectors)  # kept alive while its quantiser is read
            self._centroids[nlist] = faiss.downcast_index(faiss.extract_index_ivf(coarse).quantizer).reconstruct_n(0, nlist)
            self.coarse_seconds[nlist] = time.perf_counter() - start
        return self._centroids[nlist]

    def projected(self, d: int) -> tuple[faiss.LinearTransform, "SharedTraining", float]:
        """(the projection to ``d`` dimensions learnt from the sample, a SharedTraining of the
        projected sample, seconds it took), made once per ``d``."""
        if d not in self._projected:
            start = time.perf_counter()
            if self._axes is None:
                self._axes = principal_axes(self.vectors)  # once for every projected dimension
            projection = fit_projection(self.vectors, d, self._axes)
            inner = SharedTraining(projection.apply(self.vectors), seed=self._seed, code_train=self._code_train)
            self._projected[d] = (projection, inner, time.perf_counter() - start)
        return self._projected[d]

    def train(self, spec: str, dim: int) -> tuple[faiss.Index, float]:
        """(the trained empty index for ``spec``, seconds it would take to train it alone).

        A ``PCAU{d}`` chain shares its projection (fitted once per ``d``) and, behind it, the
        coarse centroids of the projected sample with every other chain of that ``d``. A
        ``Refine(Shards)`` chain trains its base (what FAISS holds)."""
        spec = faiss_part(spec)
        projected, rest = split_projection(spec)
        if projected is not None:
            projection, inner, seconds = self.projected(projected)
            index, inner_seconds = inner.train(rest, projected)
            return chain(projection, index), seconds + inner_seconds

        probe = faiss.index_factory(int(dim), split_refine(spec)[0], faiss.METRIC_INNER_PRODUCT)
        ivf = shared_ivf(probe)
        if ivf is None:
            start = time.perf_counter()
            return faiss_index.train(spec, dim, self.vectors), time.perf_counter() - start
        nlist = int(ivf.nlist)
        centroids = self.centroids(dim, nlist)
        start = time.perf_counter()
        index = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
        faiss_index._no_polysemous(index)
        shared_ivf(index).quantizer.add(centroids)  # ntotal == nlist: IVF training keeps these
        index.train(self.code_sample)
        return index, time.perf_counter() - start + self.coarse_seconds[nlist]


def choose(vectors: np.ndarray, target: float = TARGET_RECALL, specs: list[str] | None = None, seed: int = 0,
           budget: float | None = None, items: int | None = None) -> tuple[Choice, faiss.Index | None]:
    """Pick the cheapest spec and parameters reaching ``target`` recall@10 on ``vectors``.

    Args:
        vectors: N×D float32 L2-normalised embeddings (the training sample of the index).
        target: recall@10 to reach.
        specs: specs to try in order (default :func:`candidates`).
        seed: query sampling seed.
        budget: bytes of RAM per item for search (:func:`candidates`); when no spec reaches the
            target, the one with the best measured recall is kept (with no budget, the last
            tried: exact ``Flat``).
        items: the index's items (default ``len(vectors)``): how many inverted lists
            :func:`candidates` gives the IVF specs.

    Returns:
        (choice, trained): ``trained`` is the chosen spec's trained, empty factory index
        (None for exact ``Flat``): its IVF centroids trained on all of ``vectors``, its code
        on at most :data:`CODE_TRAIN` of them; at most :data:`TUNE_ITEMS` of ``vectors`` are
        used to measure.
    """

    start = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    # the queries are held out: trained on and filled without them, they are new images to the index
    rows = query_rows(n, seed=seed) if n > 2 * QUERIES else np.zeros(0, dtype=np.int64)
    queries = np.ascontiguousarray(vectors[rows])
    rest = np.delete(vectors, rows, axis=0) if len(rows) else vectors
    tune = rest if len(rest) <= TUNE_ITEMS else rest[np.sort(rng.choice(len(rest), TUNE_ITEMS, replace=False))]
    tune = np.ascontiguousarray(tune)
    if not len(rows):  # too few to hold any out: the items themselves, each query's own id dropped
        rows = query_rows(len(tune), seed=seed)
        queries, self_ids, exact = np.ascontiguousarray(tune[rows]), rows, exact_neighbours(tune, rows)
    else:
        self_ids = None
        _, exact = faiss.knn(queries, tune, K, metric=faiss.METRIC_INNER_PRODUCT)  # once, for every candidate and point
    shared = SharedTraining(rest, seed=seed)
    tried: list[Measurement] = []
    best, trained, train_seconds = None, None, 0.0
    order = specs or candidates(dim, n, budget, items=items)
    if not order:
        raise RuntimeError(f"no index spec fits a memory budget of {budget:.0f} bytes per item for {dim}-d vectors")
    best_seen, trained_best, seconds_best = None, None, 0.0
    ceilings: dict[int, Measurement] = {}
    for spec in order:
        projected = split_projection(spec)[0]
        if projected is not None and len(order) > 1 and not reranks_from_shards(spec):
            # exact search in the projected space bounds what any chain behind this projection can
            # reach: a projection whose bound is below the target is skipped untrained
            if projected not in ceilings:
                projection = shared.projected(projected)[0]
                flat = faiss.IndexPreTransform(projection, faiss.IndexFlatIP(projected))
                flat.add(tune)
                ceilings[projected] = measure(flat, queries, self_ids, exact, {}, f"PCAU{projected},Flat")
                tried.append(ceilings[projected])
            if ceilings[projected].recall_at_10 < target and spec != order[-1]:
                log.info("auto: %s skipped: exact search after its projection reaches recall@10 %.3f < %.2f", spec,
                         ceilings[projected].recall_at_10, target)
                continue
        if is_flat(spec):
            flat = faiss.IndexFlatIP(dim)
            flat.add(tune)
            best, trained, train_seconds = measure(flat, queries, self_ids, exact, {}, "Flat"), None, 0.0
            tried.append(best)
            break
        try:
            trained, train_seconds = shared.train(spec, dim)
        except RuntimeError as exc:  # too few points for this spec: try the next one
            log.info("auto: %s cannot be trained on %d items (%s)", spec, n, str(exc).splitlines()[-1])
            continue
        probe = faiss.clone_index(trained)
        probe.add(tune)
        if reranks_from_shards(spec):  # re-ranked from the stored vectors, as the shards will be
            probe = from_array(probe, tune)
        best, points = tune_params(probe, spec, queries, self_ids, exact, target)
        tried.extend(points)
        del probe
        if best.reaches(target):
            break
        if best_seen is None or (best.low, best.recall_at_10) > (best_seen.low, best_seen.recall_at_10):
            best_seen, trained_best, seconds_best = best, trained, train_seconds
        log.info("auto: %s reaches recall@10 %.3f (lower bound %.3f) < %.2f on this data; trying a finer index", spec,
                 best.recall_at_10, best.low, target)
    if best is None:
        raise RuntimeError(f"none of {order} can be trained on {n} items")
    if budget is not None and not best.reaches(target) and best_seen is not None and best_seen is not best \
            and (best_seen.low, best_seen.recall_at_10) > (best.low, best.recall_at_10):
        best, trained, train_seconds = best_seen, trained_best, seconds_best
    choice = Choice(best.spec, best.params, best.recall_at_10, best.qps, float(target), int(len(tune)), int(len(rows)),
                    time.perf_counter() - start, tried, train_seconds, best.low, self_ids is None)
    return choice, trained


#: shard storages the chain rule (:func:`choose_chain_storage`) tries, fewest bytes first (a
#: transform code before the scalar code of the same size)
CHAIN_STORAGES = ("tc4", "tc6", "sq6", "tc8", "sq8")
#: how much held-out recall@10 a compact shard storage may cost the chosen chain, against the
#: same chain over the shards as they are stored now
STORAGE_TOLERANCE = 0.005
#: held-out queries of that measurement (more than :data:`QUERIES`: a difference of a few
#: thousandths is measured)
STORAGE_QUERIES = 1000


def chain_recall_on(truth: np.ndarray, stored: np.ndarray, spec: str, params: dict, seed: int = 0,
                    queries: int = STORAGE_QUERIES) -> Measurement:
    """Held-out recall@10 of ``spec`` searched with ``params`` when the index stores ``stored``
    (the decoded shard vectors, row for row ``truth``): the chain trained on and filled with the
    stored vectors (a ``Refine(Shards)`` chain re-ranking from them), queried with ``truth``'s
    held-out rows (new images come from the encoder, unrounded), the exact top-10 by brute force
    over ``truth``."""
    truth = np.ascontiguousarray(truth, dtype=np.float32)
    stored = np.ascontiguousarray(stored, dtype=np.float32)
    n, dim = truth.shape
    rows = query_rows(n, min(queries, n // 4), seed=seed)
    q = np.ascontiguousarray(truth[rows])
    keep = np.setdiff1d(np.arange(n), rows, assume_unique=True)
    rng = np.random.default_rng(seed)
    tune = keep if len(keep) <= TUNE_ITEMS else np.sort(rng.choice(keep, TUNE_ITEMS, replace=False))
    _, exact = faiss.knn(q, np.ascontiguousarray(truth[tune]), K, metric=faiss.METRIC_INNER_PRODUCT)
    trained, _ = SharedTraining(np.ascontiguousarray(stored[keep]), seed=seed).train(spec, dim)
    probe = faiss.clone_index(trained)
    vectors = np.ascontiguousarray(stored[tune])
    probe.add(vectors)
    if reranks_from_shards(spec):
        probe = from_array(probe, vectors)
    return measure(probe, q, None, exact, params, spec)


def choose_chain_storage(sample: np.ndarray, spec: str, params: dict, shard_size: int, seed: int = 0,
                         tolerance: float = STORAGE_TOLERANCE, storages: tuple = CHAIN_STORAGES) -> dict:
    """The shard storage an approximate index's chain can afford: the fewest bytes of
    ``storages`` (default :data:`CHAIN_STORAGES`) whose held-out recall@10 of the whole chain (:func:`chain_recall_on`:
    trained on, filled with and re-ranking from the decoded stored vectors, ground truth from
    ``sample``) is at most ``tolerance`` below the same chain's over ``sample`` as it is stored now;
    ``None`` when none is. ``sample``'s rows are scalar-quantised in blocks of ``shard_size`` (each
    shard's own per-dimension range, as :func:`~medcbir.indexer.shard.write_shard` stores them);
    for a transform code each half of the rows is coded by a codebook fitted on the other half
    (:class:`~medcbir.indexer.transform_codec.CrossFit`: what the codebook, fitted on the sample,
    does to the rows of later shards).

    Returns:
        ``{"dtype", "reference", "tried", "tolerance", "queries", "items", "spec", "params",
        "seconds"}``: ``reference`` the recall@10 over the vectors as stored, ``tried`` each
        storage's (or why it was not measured).
    """
    start = time.perf_counter()
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    reference = chain_recall_on(sample, sample, spec, params, seed)
    tried, chosen = {}, None
    cross = CrossFit(sample, seed, block=shard_size) if any(is_transform(d) for d in storages) else None
    for dtype in storages:
        if is_transform(dtype):
            if not cross.fits():
                tried[dtype] = cross.not_measured()
                continue
            decoded = cross.decoded(dtype)
        else:
            decoded = np.empty_like(sample)
            for lo in range(0, len(sample), max(1, int(shard_size))):
                hi = min(len(sample), lo + max(1, int(shard_size)))
                codes, value_range = sq_encode(sample[lo:hi], dtype)
                decoded[lo:hi] = Decoder(dtype, sample.shape[1], value_range).decode(codes)
        measured = chain_recall_on(sample, decoded, spec, params, seed)
        tried[dtype] = round(measured.recall_at_10, 4)
        if measured.recall_at_10 >= reference.recall_at_10 - tolerance:
            chosen = dtype
            break
    return {"dtype": chosen, "reference": round(reference.recall_at_10, 4), "tried": tried, "tolerance": tolerance,
            "queries": int(min(STORAGE_QUERIES, len(sample) // 4)), "items": int(len(sample)), "spec": spec,
            "params": dict(params), "seconds": round(time.perf_counter() - start, 2)}
