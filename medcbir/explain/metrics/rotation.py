"""Dice between a thresholded saliency map and the mask, swept over input rotation (Saranchuk).

The image and its mask are rotated by θ ∈ {0, Δ, …, 360 − Δ} about the centre (bilinear for the
image, nearest for the mask); the method explains each rotated image; its map is binarised to its
top-|mask| pixels (so the map and the mask have the same area) and compared with the rotated
mask by Dice = 2|A ∩ B| / (|A| + |B|). A map that follows the anatomy keeps its Dice at every
angle; one that follows the frame (e.g. border artefacts) does not. All angles are one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.geometry.transform import rotate

from medcbir.explain.metrics._common import as_mask, descending_order


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A ∩ B| / (|A| + |B|) of two boolean arrays (1 if both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def top_area(heatmap: np.ndarray, area: int) -> np.ndarray:
    """Boolean map of the ``area`` most relevant pixels (ties in raster order)."""
    out = np.zeros(heatmap.size, dtype=bool)
    out[descending_order(heatmap)[:area]] = True
    return out.reshape(heatmap.shape)


def dice_rotation_sweep(method, encoder, image: torch.Tensor, mask, angles=range(0, 360, 30), targets=None, **options) -> dict:
    """Dice of ``method``'s thresholded map against the rotated mask at each angle.

    Args:
        method: an explanation method ``method(encoder, images, targets, **options)``.
        encoder: maps B×C×H×W to embeddings.
        image: C×H×W.
        mask: H×W ground truth.
        angles: rotation angles in degrees (counter-clockwise).
        targets: 1×D target embedding, ``None`` = each rotated image's own.
        **options: passed to ``method``.

    Returns:
        ``{"angles": [...], "dice": [...], "mean": float, "min": float}``.
    """
    gt = torch.as_tensor(as_mask(mask), dtype=torch.float32)
    angles = [float(a) for a in angles]
    theta = torch.tensor(angles)
    n = len(angles)
    rotated = rotate(image[None].float().expand(n, -1, -1, -1), theta, mode="bilinear")
    masks = rotate(gt[None, None].expand(n, -1, -1, -1), theta, mode="nearest")[:, 0] > 0.5
    tgt = None if targets is None else torch.as_tensor(targets).reshape(1, -1).expand(n, -1)
    heat = method(encoder, rotated, tgt, **options).detach().numpy()
    scores = [dice(top_area(heat[i], int(masks[i].sum())), masks[i].numpy()) for i in range(n)]
    return {"angles": angles, "dice": scores, "mean": float(np.mean(scores)), "min": float(np.min(scores))}
