"""Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022; as in Quantus).

With K = |GT| pixels in the ground-truth mask and P_K the K pixels of highest relevance,
    RRA = |P_K ∩ GT| / K.
1 means the K most relevant pixels all lie in the mask. Ties are broken in raster order.
"""

from __future__ import annotations

from medcbir.explain.metrics._common import as_map, as_mask, descending_order


def relevance_rank_accuracy(heatmap, mask) -> float:
    """Fraction of the |mask| highest-relevance pixels that lie inside ``mask``.

    Args:
        heatmap: H×W relevance.
        mask: H×W ground truth (non-zero = inside).
    """
    heat = as_map(heatmap)
    gt = as_mask(mask, heat.shape)
    k = int(gt.sum())
    top = descending_order(heat)[:k]
    return float(gt.ravel()[top].sum() / k)
