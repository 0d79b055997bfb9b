"""Pointwise localisation: the pointing game over a map's several strongest peaks.

Following the point-based localisation of Aggarwal et al. (saliency in medical imaging), each of
the map's top ``n`` local maxima (landmarks, see :mod:`.landmarks`) is a pointing guess:
    PL = |{landmarks inside GT}| / |landmarks|.
With n = 1 it is the pointing game on the global maximum.
"""

from __future__ import annotations

from medcbir.explain.metrics._common import as_map, as_mask
from medcbir.explain.metrics.landmarks import local_maxima


def pointwise_localisation(heatmap, mask, n: int = 5, min_distance: int = 3) -> float:
    """Fraction of the heatmap's top-``n`` local maxima that lie inside ``mask``.

    Args:
        heatmap: H×W relevance.
        mask: H×W ground truth.
        n: number of peaks.
        min_distance: peak neighbourhood half-size (pixels).
    """
    heat = as_map(heatmap)
    gt = as_mask(mask, heat.shape)
    peaks = local_maxima(heat, n, min_distance)
    if len(peaks) == 0:
        return 0.0
    return float(gt[peaks[:, 0], peaks[:, 1]].mean())
