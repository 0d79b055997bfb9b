"""Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022; as in Quantus).

Only positive relevance counts (negative evidence would cancel mass):
    RMA = Σ_{p ∈ GT} max(R_p, 0) / Σ_p max(R_p, 0).
"""

from __future__ import annotations

from medcbir.explain.metrics._common import as_map, as_mask


def relevance_mass_accuracy(heatmap, mask) -> float:
    """Share of the positive relevance that falls inside ``mask`` (0 if there is none).

    Args:
        heatmap: H×W relevance.
        mask: H×W ground truth.
    """
    heat = as_map(heatmap).clip(min=0)
    gt = as_mask(mask, heat.shape)
    total = heat.sum()
    return float(heat[gt].sum() / total) if total > 0 else 0.0
