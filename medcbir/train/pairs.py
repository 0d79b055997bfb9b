"""Anatomy-aware pairs and sequences from an archive's series: neighbouring slices, ordered runs.

Two slices a few millimetres apart in one series show nearly the same anatomy with different
noise, partial-volume and small shape changes: a positive pair that teaches the encoder what
*anatomy* is, which image augmentations alone cannot (Wickstrøm et al. 2023 propose it as their
next step). Ordered runs of consecutive slices feed the sequence-sorting pretext
(:mod:`medcbir.train.seqsort`, Zhang et al.).

Positions are the slice positions in mm from ImagePositionPatient (cached with each item);
slices without a position take part in neither.

Example:
    >>> table = neighbour_table(data.series, data.position, max_mm=4.0)   # doctest: +SKIP
    >>> partners = draw_partners(batch_index, table, p=0.5, generator=g)
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _series_runs(series: np.ndarray, position: np.ndarray) -> list[np.ndarray]:
    """Per series, the item indices with a finite position, sorted by position."""
    runs = []
    series = np.asarray(series, dtype=object).astype(str)
    position = np.asarray(position, dtype=np.float64)
    for uid in sorted(set(series.tolist())):
        members = np.flatnonzero((series == uid) & np.isfinite(position))
        if len(members):
            runs.append(members[np.argsort(position[members], kind="stable")])
    return runs


def neighbour_table(series: np.ndarray, position: np.ndarray, max_mm: float) -> list[np.ndarray]:
    """For each item, the other items of its series within ``max_mm`` of its position.

    Args:
        series: N series UIDs.
        position: N slice positions in mm (NaN = unknown: no neighbours).
        max_mm: the largest distance of a neighbour (inclusive).

    Returns:
        N int arrays (possibly empty).
    """
    position = np.asarray(position, dtype=np.float64)
    table: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(len(position))]
    if max_mm <= 0:
        return table
    for run in _series_runs(series, position):
        z = position[run]
        for a, i in enumerate(run):
            lo = np.searchsorted(z, z[a] - max_mm - 1e-6, side="left")
            hi = np.searchsorted(z, z[a] + max_mm + 1e-6, side="right")
            near = run[lo:hi]
            table[i] = near[near != i].astype(np.int64)
    return table


def draw_partners(index: torch.Tensor, table: list[np.ndarray], p: float, generator: torch.Generator) -> torch.Tensor:
    """Each anchor's positive: with probability ``p`` a random neighbour (if it has one), else itself.

    Args:
        index: B item indices (the anchors).
        table: :func:`neighbour_table`.
        p: probability of a neighbour-slice positive.
        generator: the torch RNG (seeded per step, so resumed runs draw the same partners).
    """
    out = index.clone()
    coins = torch.rand(len(index), generator=generator)
    picks = torch.rand(len(index), generator=generator)
    for b, i in enumerate(index.tolist()):
        near = table[i]
        if len(near) and float(coins[b]) < p:
            out[b] = int(near[min(len(near) - 1, int(float(picks[b]) * len(near)))])
    return out


def sequences(series: np.ndarray, position: np.ndarray, length: int, max_gap_mm: float = math.inf) -> np.ndarray:
    """All runs of ``length`` consecutive slices of a series, in position order (M×length indices).

    Args:
        series, position: per item, as in :func:`neighbour_table`.
        length: slices per run (k).
        max_gap_mm: runs with a gap larger than this between consecutive slices are left out.
    """
    out = []
    position = np.asarray(position, dtype=np.float64)
    for run in _series_runs(series, position):
        z = position[run]
        for start in range(len(run) - length + 1):
            window = run[start : start + length]
            gaps = np.diff(z[start : start + length])
            if np.all(gaps > 0) and np.all(gaps <= max_gap_mm):
                out.append(window)
    return np.array(out, dtype=np.int64).reshape(-1, length)


#: planes whose slices can be matched across series (an oblique plane has no shared axis)
MATCHABLE_PLANES = ("axial", "coronal", "sagittal")


def relative_positions(series: np.ndarray, position: np.ndarray, min_slices: int = 3) -> np.ndarray:
    """Each slice's position within its series' extent, 0 (first) … 1 (last); NaN if unknown.

    A series with fewer than ``min_slices`` positioned slices, or no extent, gives NaN.
    """
    position = np.asarray(position, dtype=np.float64)
    out = np.full(len(position), np.nan)
    for run in _series_runs(series, position):
        z = position[run]
        if len(run) >= min_slices and z[-1] > z[0]:
            out[run] = (z - z[0]) / (z[-1] - z[0])
    return out


class PositionPartners:
    """Positional positives across series (Zeng et al. 2021, "Positional contrastive learning").

    Scans of one body region cover roughly the same anatomy, so slices at the same *relative*
    position of two series in the same plane show the same anatomy in two different patients,
    scanners and protocols: a positive pair that teaches what image augmentations cannot, that
    anatomy, not the patient or the scanner, is what should match. Partners come from other series
    of the same plane (axial, coronal or sagittal, from ImageOrientationPatient) whose relative
    position is within ``delta``; the direction of a series is arbitrary (head-first or feet-first
    scans), so position is taken in patient coordinates (the slice normal's dominant axis).

    Args:
        series: N series UIDs.
        position: N slice positions in mm along the normal (NaN = unknown).
        plane: N planes; only :data:`MATCHABLE_PLANES` take part.
        delta: the largest difference of relative positions of a pair.
        allowed: optional N bool mask of the items partners may come from (e.g. training items).
    """

    def __init__(self, series: np.ndarray, position: np.ndarray, plane: np.ndarray, delta: float, allowed: np.ndarray | None = None) -> None:
        self.series = np.asarray(series, dtype=object).astype(str)
        self.t = relative_positions(self.series, position)
        plane = np.asarray(plane, dtype=object).astype(str)
        ok = np.isfinite(self.t) & np.isin(plane, MATCHABLE_PLANES)
        if allowed is not None:
            ok &= np.asarray(allowed, dtype=bool)
        self.delta = float(delta)
        self.plane = plane
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in MATCHABLE_PLANES:
            members = np.flatnonzero(ok & (plane == name))
            members = members[np.argsort(self.t[members], kind="stable")]
            self._sorted[name] = (members, self.t[members])

    def candidates(self, i: int) -> np.ndarray:
        """All partners of item ``i`` (other series, same plane, relative position within delta)."""
        if not np.isfinite(self.t[i]) or self.plane[i] not in self._sorted:
            return np.zeros(0, dtype=np.int64)
        members, t = self._sorted[self.plane[i]]
        lo = np.searchsorted(t, self.t[i] - self.delta - 1e-9, side="left")
        hi = np.searchsorted(t, self.t[i] + self.delta + 1e-9, side="right")
        near = members[lo:hi]
        return near[self.series[near] != self.series[i]].astype(np.int64)

    def positive_mask(self, items: torch.Tensor) -> torch.Tensor:
        """M×M bool: items ``a`` and ``b`` show the same anatomy (same plane, relative positions
        within delta; any series, including the same one). Items without a relative position
        match nobody (the caller adds each view's own pair)."""
        rows = np.asarray(items.tolist(), dtype=np.int64)
        t = self.t[rows]
        plane = self.plane[rows]
        ok = np.isfinite(t) & np.isin(plane, MATCHABLE_PLANES)
        close = np.abs(t[:, None] - t[None, :]) <= self.delta + 1e-9
        same = (plane[:, None] == plane[None, :]) & ok[:, None] & ok[None, :]
        return torch.from_numpy(close & same)

    def coverage(self) -> float:
        """Fraction of items that have at least one partner."""
        return float(np.mean([len(self.candidates(i)) > 0 for i in range(len(self.t))])) if len(self.t) else 0.0

    def draw(self, index: torch.Tensor, p: float, generator: torch.Generator, current: torch.Tensor | None = None) -> torch.Tensor:
        """Each anchor's positive: with probability ``p`` a random positional partner (if any),
        else ``current`` (default: the anchor itself).

        Deterministic for the generator's state (resumed runs draw the same partners).
        """
        out = (index if current is None else current).clone()
        coins = torch.rand(len(index), generator=generator)
        picks = torch.rand(len(index), generator=generator)
        for b, i in enumerate(index.tolist()):
            if float(coins[b]) >= p:
                continue
            near = self.candidates(i)
            if len(near):
                out[b] = int(near[min(len(near) - 1, int(float(picks[b]) * len(near)))])
        return out
