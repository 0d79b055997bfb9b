"""Deletion and insertion AUC with a similarity target (Petsiuk et al., "RISE", BMVC 2018).

Pixels are ranked by relevance. Deletion replaces the top fraction f of pixels with a baseline
(0) and insertion starts from a blurred copy and restores them, for f = 0, 1/T, …, 1; at each
step the score is s_f = cosine(encoder(x_f), target). The AUC is the trapezoid rule over f:
    AUC = Σ_t (s_{t} + s_{t+1}) / (2T).
Lower deletion AUC and higher insertion AUC mean a more faithful map. All T+1 perturbed images of
an image go through the encoder in one batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcbir.explain.base import check_images, embed, resolve_targets
from medcbir.explain.metrics._common import as_map, descending_order


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = image.shape[0]
    x = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[0]


def perturbation_curve(
    encoder: nn.Module,
    image: torch.Tensor,
    heatmap,
    target: torch.Tensor | None = None,
    mode: str = "deletion",
    steps: int = 16,
    blur_sigma: float = 5.0,
) -> np.ndarray:
    """Scores s_0 … s_T along the deletion or insertion path of one image (C×H×W)."""
    image = check_images(image[None])[0]
    heat = as_map(heatmap)
    c, h, w = image.shape
    order = torch.as_tensor(descending_order(heat))
    counts = np.linspace(0, h * w, steps + 1).round().astype(int)
    start = torch.zeros_like(image) if mode == "deletion" else _blur(image, blur_sigma)
    finish = image if mode == "insertion" else torch.zeros_like(image)
    source = image if mode == "deletion" else start
    batch = []
    for n in counts:
        chosen = torch.zeros(h * w, dtype=torch.bool)
        chosen[order[:n]] = True
        chosen = chosen.view(1, h, w)
        batch.append(torch.where(chosen, finish, source))
    tgt = resolve_targets(encoder, image[None], None if target is None else target.reshape(1, -1))
    emb = embed(encoder, torch.stack(batch))
    return F.cosine_similarity(emb, tgt, dim=1).numpy().astype(np.float64)


def _auc(curve: np.ndarray) -> float:
    return float(np.sum(curve[1:] + curve[:-1]) / (2 * (len(curve) - 1)))


def deletion_auc(encoder, image, heatmap, target=None, steps: int = 16) -> float:
    """Area under the deletion curve (lower is better).

    Args:
        encoder: maps B×C×H×W to embeddings.
        image: C×H×W.
        heatmap: H×W relevance.
        target: D target embedding, ``None`` = the image's own.
        steps: number of deletion steps T.
    """
    return _auc(perturbation_curve(encoder, image, heatmap, target, "deletion", steps))


def insertion_auc(encoder, image, heatmap, target=None, steps: int = 16, blur_sigma: float = 5.0) -> float:
    """Area under the insertion curve from a blurred start (higher is better); args as :func:`deletion_auc`."""
    return _auc(perturbation_curve(encoder, image, heatmap, target, "insertion", steps, blur_sigma))
