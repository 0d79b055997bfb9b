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
