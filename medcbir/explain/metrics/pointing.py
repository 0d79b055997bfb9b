"""Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018).

A hit when the maximum of the heatmap lies inside the mask, or within ``tolerance`` pixels of it
(the paper uses 15 px at 224 px); the score over a set of images is hits / (hits + misses).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medcbir.explain.metrics._common import as_map, as_mask, descending_order


def pointing_game(heatmap, mask, tolerance: int = 0) -> float:
    """1.0 if the heatmap's maximum (first in raster order on ties) hits the mask, else 0.0.

    Args:
        heatmap: H×W relevance.
        mask: H×W ground truth.
        tolerance: the mask is grown by a disc of this radius (pixels) first.
    """
    heat = as_map(heatmap)
    gt = as_mask(mask, heat.shape)
    if tolerance > 0:
        r = int(tolerance)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        gt = ndimage.binary_dilation(gt, structure=(yy**2 + xx**2) <= r * r)
    return float(gt.ravel()[descending_order(heat)[0]])
