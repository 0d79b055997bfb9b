"""Slice-to-slice correspondence between two exams of one patient.

Between two CT exams of a patient the same anatomy sits at another table position: in patient
coordinates the exams differ mainly by a shift along the body axis (z). One slice alone is a weak
witness of that shift (neighbouring levels look alike), the whole series is a strong one. So the
correspondence is found for the series, then read off for the query slice:

1. ``S`` = cosine similarity of every slice of the query's series (M) with every slice of the
   other series (N), from their embeddings.
2. For every candidate shift ``b`` (each difference ``z_prior[j] - z_query[i]``, i.e. every way
   of putting one slice on another), each query slice is paired with the other series' slice
   nearest to ``z_query[i] + b``; a pair further apart than half a slice spacing counts as "not
   covered". The shift's score is the mean over the M query slices of the paired similarity,
   a not-covered slice contributing the median of ``S`` (so a shift is not rewarded for
   sliding the series out of the other exam's range, nor punished for a partial overlap).
3. The best shift maps the query slice to its corresponding slice.

Without positions (NaN), slice order is used as position (spacing 1). With one query slice and no
series, the answer is simply the most similar slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Alignment:
    """The correspondence of a query slice in another series.

    Attributes:
        index: position (in the other series' given order) of the corresponding slice.
        shift: z shift (mm, or slices without positions) from the query series to the other;
            NaN for a single-slice query.
        score: the shift's score (mean paired similarity, step 2 above).
        covered: the query slice's level lies within the other series' range.
    """

    index: int
    shift: float
    score: float
    covered: bool


def _spacing(z_sorted: np.ndarray) -> float:
    steps = np.diff(z_sorted)
    steps = steps[steps > 1e-6]
    return float(np.median(steps)) if len(steps) else 1.0


def align_series(similarity: np.ndarray, z_query, z_other, query_index: int) -> Alignment:
    """Find the slice of the other series corresponding to ``query_index`` of the query series.

    Args:
        similarity: M×N cosine similarities (query series slices × other series slices).
        z_query: M slice positions of the query series (any order; NaN → order).
        z_other: N slice positions of the other series.
        query_index: which query slice to map.

    Returns:
        An :class:`Alignment` (``index`` into ``z_other`` as given).
    """
    s = np.asarray(similarity, dtype=np.float64)
    m, n = s.shape
    if n == 0:
        raise ValueError("the other series has no slice")
    if m == 1:
        j = int(np.argmax(s[0]))
        return Alignment(j, float("nan"), float(s[0, j]), True)
    zq, zo = np.asarray(z_query, dtype=np.float64), np.asarray(z_other, dtype=np.float64)
    if not (np.all(np.isfinite(zq)) and np.all(np.isfinite(zo))):
        zq, zo = np.arange(m, dtype=np.float64), np.arange(n, dtype=np.float64)  # the given order on both sides
    order = np.argsort(zo, kind="stable")
    zo_sorted = zo[order]
    tolerance = 0.5 * max(_spacing(zo_sorted), _spacing(np.sort(zq))) + 1e-6
    shifts = np.unique(np.round((zo[None, :] - zq[:, None]).ravel(), 3))
    target = zq[None, :] + shifts[:, None]  # shifts × M
    pos = np.clip(np.searchsorted(zo_sorted, target), 1, max(1, n - 1))
    left = zo_sorted[pos - 1]
    right = zo_sorted[np.minimum(pos, n - 1)]
    nearest = np.where(np.abs(target - left) <= np.abs(target - right), pos - 1, np.minimum(pos, n - 1))
    covered = np.abs(zo_sorted[nearest] - target) <= tolerance
    paired = s[np.arange(m)[None, :], order[nearest]]
    fill = float(np.median(s))
    scores = np.where(covered, paired, fill).mean(axis=1)
    best = int(np.argmax(scores))
    j = int(order[nearest[best, query_index]])
    return Alignment(j, float(shifts[best]), float(scores[best]), bool(covered[best, query_index]))
