"""Deletion and insertion curves of region-match maps: is a map faithful to the match score?

A region-match map (:mod:`medcbir.explain.regions`) ranks the pixels of a neighbour's
neighbourhood (what its matched region's descriptor reads) by how much they make the region match
the query's. RISE's perturbation metrics (Petsiuk et al., BMVC 2018) check that ranking against
the score itself, with the region explanations' own perturbation (a pixel takes the local smooth
background, :func:`medcbir.explain.regions.local_background`):

- **deletion**: the top fraction f of the map's pixels takes the background, f = 0, 1/T, …, 1, and
  the match score ``1 / (1 + d² / D)`` of the re-described box is taken at each step; a faithful
  map makes it fall fast (lower area is better);
- **insertion**: from the neighbourhood all background, the top fraction f is restored; a faithful
  map makes the score come back fast (higher area is better).

The areas are of the match score itself, as RISE takes the class score: the trapezoid rule over f,
as for the encoder's maps (:mod:`medcbir.explain.metrics.deletion`). Both curves run between the
same ends (the neighbourhood as it is, all background), so the maps of one neighbour differ only
by the path; the span is narrow (a strong match keeps a score near its own when its structure is
gone, ``1 / (1 + d² / D)``), so differences between maps are small and read best paired, over many
neighbours. Putting each curve on its span instead was tried and left: the paths are not monotone
(a half-deleted neighbourhood may score above both ends), and a narrow span blew them up.
Unlike the localisation metrics these need no lesion mask: they score what the map says about the
descriptor, not whether it points at a lesion. Every map of one neighbour (a method's and the
trivial maps) goes through the same curves; the 2 (T + 1) perturbed neighbourhoods of a map are
described in one batch.
"""

from __future__ import annotations

import numpy as np

from medcbir.explain.metrics._common import descending_order

#: Steps T of the deletion and insertion paths.
STEPS = 16
#: The keys these metrics add to a region explanation's scores (``medcbir.explain.evaluation.scoring``'s).
KEYS = ("deletion_auc", "insertion_auc")


def curves(hood, score, heat: np.ndarray, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """(deletion, insertion) match scores s_0 … s_T of a map over the neighbourhood (its shape)."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != hood.shape:
        raise ValueError(f"a map over the neighbourhood has its shape {hood.shape}, not {heat.shape}")
    order = descending_order(heat)
    n = heat.size
    crop, background = hood.crop.ravel(), hood.background.ravel()
    batch = np.empty((2 * (steps + 1), n), dtype=np.float32)
    chosen = np.zeros(n, dtype=bool)
    for t, count in enumerate(np.linspace(0, n, steps + 1).round().astype(int)):
        chosen[:] = False
        chosen[order[:count]] = True
        batch[t] = np.where(chosen, background, crop)
        batch[steps + 1 + t] = np.where(chosen, crop, background)
    scores = np.asarray(score(hood.describe(batch.reshape(-1, *hood.shape))), dtype=np.float64)
    return scores[:steps + 1], scores[steps + 1:]


def area(curve: np.ndarray) -> float:
    """Trapezoid area over f ∈ [0, 1] of a curve sampled at T + 1 evenly spaced steps."""
    curve = np.asarray(curve, dtype=np.float64)
    return float(np.sum(curve[1:] + curve[:-1]) / (2 * (len(curve) - 1)))


def faithfulness(hood, score, heat: np.ndarray, steps: int = STEPS) -> dict[str, float]:
    """``{"deletion_auc", "insertion_auc"}`` of a map over the neighbourhood."""
    deletion, insertion = curves(hood, score, heat, steps)
    return {"deletion_auc": area(deletion), "insertion_auc": area(insertion)}
