"""A label-free quality score of an encoder on an archive: do cross-patient neighbours agree with the series?

No labels, only the archive's own structure. A slice's K nearest neighbours among *other*
patients are what retrieval returns; whether they show the same anatomy is unknown, but the
archive knows where every slice sits in its series (the slice position in mm along the normal).
Two series of the same body region in two patients are related by one rigid map along the
normal, ``z' ≈ a·z + b`` (``|a|`` near 1: millimetres are millimetres, up to body size; the sign
free, since head-first and feet-first series run opposite ways; ``b`` free, since scan ranges and
table positions differ). A good encoder's neighbours from series S to series S' all follow *one*
such map; a poor encoder's scatter. So:

1. **Links**: each query slice's K nearest neighbours among other patients (rank 1..K).
2. **Series pairs**: links grouped by (query series, neighbour series).
3. **Map fit, leaving the query out**: in each pair with links from at least ``min_queries``
   query slices, for each slope ``a`` of :data:`SLOPES` the offset ``b`` is the median of
   ``z_neighbour − a·z_query`` over the *other* query slices' links; a link *agrees* when it lies
   within ``tol`` mm of that map; the slope that makes most links agree is kept. Leaving the
   query's own links out keeps a link from voting for itself (with few links, the median would
   otherwise sit on it).
4. **Tolerance**: ``max(tol_mm, 1.5 × the neighbour series' slice spacing)``: no neighbour can be
   closer than the slices it is sampled from.
5. **Score** (``agreement@K``): links that agree count as relevant, links in pairs too small to
   fit as not relevant, and the score is MAP@K over the queries on that relevance (the mean over
   k = 1..K of precision@k, as :func:`medcbir.engine.metrics.map_at_k`), so it reads on the scale
   of the labelled MAP@K it stands in for.

What it cannot see: whether the agreeing map is the *anatomical* one (an encoder that matched
every slice to the slice at the same table height whatever the body would agree); slices without
a position (radiographs, key images) are never relevant, so an archive of single images has no
score (:attr:`Agreement.coverage` says how many queries could be judged). Figures of how it
ranks encoders against labelled MAP@5 are in ``benchmarks/RESULTS.md`` (``adaptation``).

:func:`compare` tells whether one encoder's per-query agreement beats another's by more than
chance (a bootstrap over series), what the trainer needs to keep only what it can show is better.

Example:
    >>> import numpy as np
    >>> z = np.tile(np.arange(8.0) * 5, 2)                 # two patients, one 8-slice series each
    >>> patient = np.repeat(["p", "q"], 8); series = np.repeat(["s1", "s2"], 8)
    >>> x = np.stack([np.cos(z / 20), np.sin(z / 20)], 1)  # an encoder that sees the level
    >>> round(agreement(x, patient, series, z, k=1).score, 3)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: slopes of the series map tried (|a| from 0.8 to 1.25: body sizes; both directions)
SLOPES = np.concatenate([np.linspace(0.8, 1.25, 7), -np.linspace(0.8, 1.25, 7)])
TOL_MM = 10.0
TOL_SPACINGS = 1.5
MIN_QUERIES = 4
K = 5


@dataclass
class Agreement:
    """The label-free score of an encoder's embeddings of an archive.

    Attributes:
        score: agreement@K, the mean of ``per_query``.
        per_query: each query's MAP@K with agreeing links as relevant.
        agreeing: Q×K bool, which of each query's neighbours agree with the series map.
        neighbours: Q×K row indices of the neighbours.
        queries: the Q query rows.
        coverage: fraction of queries with at least one link in a series pair large enough to fit.
        k: K.
    """

    score: float
    per_query: np.ndarray
    agreeing: np.ndarray
    neighbours: np.ndarray
    queries: np.ndarray
    coverage: float
    k: int

    def to_dict(self) -> dict:
        return {"agreement_at_k": self.score, "k": self.k, "n_queries": int(len(self.queries)), "coverage": self.coverage}


def neighbours_other_patients(vectors: np.ndarray, patient: np.ndarray, k: int = K, queries=None, chunk: int = 1024) -> np.ndarray:
    """Exact cosine top-K of each query row among the rows of other patients (Q×K row indices).

    Ties resolve to the lower row. A query with fewer than K rows of other patients gets -1 for
    the missing ones.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    patient = np.asarray(patient, dtype=object).astype(str)
    queries = np.arange(len(vectors)) if queries is None else np.asarray(queries, dtype=np.int64)
    k = int(min(k, len(vectors)))
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), chunk):
        rows = queries[start : start + chunk]
        sims = vectors[rows] @ vectors.T
        sims[patient[rows][:, None] == patient[None, :]] = -np.inf
        if k < sims.shape[1]:  # the K best of each row, then ordered (ties: the lower row first)
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(sims.shape[1]), (len(rows), 1))
        best = np.take_along_axis(sims, part, 1)
        order = np.lexsort((part, -best), axis=1)
        top = np.take_along_axis(part, order, 1)
        valid = np.isfinite(np.take_along_axis(sims, top, 1))
        out[start : start + len(rows)] = np.where(valid, top, -1)
    return out


def series_spacing(series: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Per row, the median spacing (mm) of its series' positioned slices (NaN if under two)."""
    series = np.asarray(series, dtype=object).astype(str)
    position = np.asarray(position, dtype=np.float64)
    out = np.full(len(series), np.nan)
    uniq, inverse = np.unique(series, return_inverse=True)
    for code in range(len(uniq)):
        rows = np.flatnonzero(inverse == code)
        z = np.sort(position[rows][np.isfinite(position[rows])])
        steps = np.diff(z)
        steps = steps[steps > 1e-6]
        if len(steps):
            out[rows] = float(np.median(steps))
    return out


def _owners(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per element its owner's code, owners × most-links matrix of each owner's elements, -1 padded)."""
    _, inverse, counts = np.unique(owner, return_inverse=True, return_counts=True)
    grouped = np.argsort(inverse, kind="stable")
    column = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    members = np.full((len(counts), int(counts.max())), -1, dtype=np.int64)
    members[inverse[grouped], column] = grouped
    return inverse, members


def _loo_medians(d: np.ndarray, inverse: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Per element of each row of ``d`` (S×L), the median of the row over the *other* owners' elements.

    One sort per row for all owners (:func:`_owners`): the t-th remaining value is found by stepping
    over the owner's own (sorted) positions, so an owner costs its few links, not another pass.
    """
    n_rows, n_all = d.shape
    order = np.argsort(d, axis=1, kind="stable")
    rank = np.empty((n_rows, n_all + 1), dtype=np.int64)
    np.put_along_axis(rank, order, np.arange(n_all)[None, :].repeat(n_rows, 0), axis=1)
    rank[:, n_all] = n_all  # the padding (-1) sorts last
    own = np.sort(rank[:, np.where(members >= 0, members, n_all)], axis=2)  # S × owners × most links
    remaining = n_all - (members >= 0).sum(axis=1)
    ranked = np.take_along_axis(d, order, axis=1)

    def kth(t: np.ndarray) -> np.ndarray:
        idx = np.broadcast_to(t, own.shape[:2]).copy()
        for j in range(own.shape[2]):
            idx += own[:, :, j] <= idx
        return np.take_along_axis(ranked, np.minimum(idx, n_all - 1), axis=1)

    medians = 0.5 * (kth((remaining - 1) // 2) + kth(remaining // 2))
    return medians[:, inverse]


def agreeing_links(query_pos, neighbour_pos, query_series, neighbour_series, neighbour_spacing, query_id, *,
                   tol_mm: float = TOL_MM, min_queries: int = MIN_QUERIES, slopes=SLOPES) -> np.ndarray:
    """Which links agree with the map between their two series, fitted on the other queries' links.

    Args:
        query_pos, neighbour_pos: per link, the positions (mm) of its two slices (NaN: unknown).
        query_series, neighbour_series: per link, the series of its two slices.
        neighbour_spacing: per link, the slice spacing of the neighbour's series (mm).
        query_id: per link, which query it comes from (links of one query are left out together).
        tol_mm, min_queries, slopes: see the module docstring.

    Returns:
        One bool per link.
    """
    zq, zn = np.asarray(query_pos, np.float64), np.asarray(neighbour_pos, np.float64)
    query_id = np.asarray(query_id)
    ok = np.isfinite(zq) & np.isfinite(zn)
    agree = np.zeros(len(zq), dtype=bool)
    for links in _series_pairs(query_series, neighbour_series, ok):
        inverse, members = _owners(query_id[links])
        if len(members) < min_queries:
            continue
        tol = max(tol_mm, TOL_SPACINGS * float(np.nanmax(np.asarray(neighbour_spacing)[links], initial=0.0)))
        # every slope at once (rows); the slope under which most links agree wins (the first on a tie)
        d = zn[links][None, :] - np.asarray(slopes, np.float64)[:, None] * zq[links][None, :]
        inside = np.abs(d - _loo_medians(d, inverse, members)) <= tol
        best = inside[int(np.argmax(inside.sum(axis=1)))]
        agree[links] = best
    return agree


def agreement(vectors, patient, series, position, *, k: int = K, queries=None, neighbours=None, tol_mm: float = TOL_MM,
              min_queries: int = MIN_QUERIES) -> Agreement:
    """agreement@K of an archive's embeddings (module docstring).

    Args:
        vectors: N×D L2-normalised embeddings (the queries' neighbours are searched among all N).
        patient: N patient groups (pseudonyms); neighbours come from other patients only.
        series: N series UIDs.
        position: N slice positions in mm along the normal (NaN: unknown).
        k: neighbours per query.
        queries: the query rows (default all): e.g. held-out patients only.
        neighbours: precomputed Q×K neighbour rows (-1 = none), e.g. from an index; None =
            :func:`neighbours_other_patients`.
        tol_mm, min_queries: see the module docstring.
    """
    patient = np.asarray(patient, dtype=object).astype(str)
    series = np.asarray(series, dtype=object).astype(str)
    position = np.asarray(position, dtype=np.float64)
    queries = np.arange(len(patient)) if queries is None else np.asarray(queries, dtype=np.int64)
    if neighbours is None:
        neighbours = neighbours_other_patients(vectors, patient, k, queries)
    neighbours = np.asarray(neighbours, dtype=np.int64)
    k = int(neighbours.shape[1]) if neighbours.ndim == 2 else int(k)
    spacing = series_spacing(series, position)
    q = np.repeat(queries, k)
    n = neighbours.reshape(-1)
    present = n >= 0
    n_safe = np.where(present, n, 0)
    agree = np.zeros(len(q), dtype=bool)
    agree[present] = agreeing_links(
        position[q[present]], position[n_safe[present]], series[q[present]], series[n_safe[present]],
        spacing[n_safe[present]], q[present], tol_mm=tol_mm, min_queries=min_queries,
    )
    agree = agree.reshape(len(queries), k)
    per_query = (np.cumsum(agree, axis=1) / np.arange(1, k + 1)).mean(axis=1) if k else np.zeros(len(queries))
    judged = _judged(q, n_safe, present, series, position, min_queries).reshape(len(queries), k).any(axis=1)
    return Agreement(
        score=float(per_query.mean()) if len(per_query) else 0.0,
        per_query=per_query,
        agreeing=agree,
        neighbours=neighbours,
        queries=queries,
        coverage=float(judged.mean()) if len(judged) else 0.0,
        k=k,
    )


def _judged(q, n, present, series, position, min_queries) -> np.ndarray:
    """Per link: it sits in a series pair with enough positioned links to fit a map."""
    ok = present & np.isfinite(position[q]) & np.isfinite(position[n])
    out = np.zeros(len(q), dtype=bool)
    for links in _series_pairs(series[q], series[n], ok):
        out[links] = len(np.unique(q[links])) >= min_queries
    return out


def _series_pairs(query_series, neighbour_series, ok) -> list[np.ndarray]:
    """The indices of the ``ok`` links, grouped by (query series, neighbour series)."""
    _, codes = np.unique(np.concatenate([np.asarray(query_series, dtype=str), np.asarray(neighbour_series, dtype=str)]), return_inverse=True)
    half = len(codes) // 2
    key = codes[:half].astype(np.int64) * (int(codes.max()) + 1) + codes[half:]
    links = np.flatnonzero(ok)
    links = links[np.argsort(key[links], kind="stable")]
    return np.split(links, np.flatnonzero(np.diff(key[links])) + 1) if len(links) else []


@dataclass
class Comparison:
    """Whether ``candidate`` beats ``reference`` on the same queries (per-query scores, paired)."""

    gain: float
    lower: float
    better: bool

    def to_dict(self) -> dict:
        return {"gain": self.gain, "lower_bound": self.lower, "better": self.better}


def compare(candidate: np.ndarray, reference: np.ndarray, groups: np.ndarray, *, confidence: float = 0.95,
            resamples: int = 1000, seed: int = 0) -> Comparison:
    """Paired bootstrap over groups (series) of the mean per-query gain of ``candidate`` over ``reference``.

    Neighbouring slices of a series are not independent evidence, so whole series are resampled.
    ``better`` holds when the one-sided lower bound at ``confidence`` is above zero.
    """
    diff = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    if not len(diff):
        return Comparison(0.0, 0.0, False)
    _, code = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(code, weights=diff)
    counts = np.bincount(code).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    lower = float(np.quantile(means, 1.0 - confidence))
    gain = float(diff.mean())
    return Comparison(gain, lower, bool(lower > 0.0))
