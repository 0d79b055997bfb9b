"""Localisation AUPRC (Arun/Aggarwal et al., "Assessing the trustworthiness of saliency maps for
localizing abnormalities in medical imaging", Radiology: AI 2021).

Each pixel is a detection scored by its relevance and labelled by the mask; the score is the
area under the precision–recall curve as average precision,
    AP = Σ_n (R_n − R_{n−1}) P_n
over the distinct relevance thresholds in decreasing order (tied pixels enter together).
"""

from __future__ import annotations

import numpy as np

from medcbir.explain.metrics._common import as_map, as_mask


def localisation_auprc(heatmap, mask) -> float:
    """Average precision of the heatmap as a pixel-wise detector of ``mask``.

    Args:
        heatmap: H×W relevance.
        mask: H×W ground truth.
    """
    heat = as_map(heatmap).ravel()
    gt = as_mask(mask, (as_map(heatmap).shape)).ravel()
    order = np.argsort(-heat, kind="stable")
    heat, gt = heat[order], gt[order]
    # last index of each run of equal scores: tied pixels are one threshold
    ends = np.r_[np.nonzero(np.diff(heat))[0], heat.size - 1]
    tp = np.cumsum(gt)[ends]
    precision = tp / (ends + 1)
    recall = tp / gt.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
