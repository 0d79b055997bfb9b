"""Average drop and increase in confidence (ADC / PIC), with confidence = similarity to the target.

Chattopadhay et al., "Grad-CAM++", WACV 2018. The explanation map keeps the image where the
saliency is high: E = x ⊙ Ĥ with Ĥ the heatmap min–max scaled to [0, 1]. With Y_i the
confidence (cosine to the target) on x_i and O_i on E_i, over N images:
    Average Drop %          ADC = 100/N Σ_i max(0, Y_i − O_i) / Y_i
    % Increase in Confidence PIC = 100/N Σ_i 1[O_i > Y_i]
Lower ADC and higher PIC are better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.explain.base import check_images, embed, resolve_targets


def explanation_map(images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """x ⊙ Ĥ: images weighted by their min–max scaled heatmaps."""
    h = heatmaps.float()
    lo = h.flatten(1).amin(1)[:, None, None]
    hi = h.flatten(1).amax(1)[:, None, None]
    scaled = (h - lo) / (hi - lo).clamp_min(1e-12)
    return images * scaled[:, None]


def average_drop_increase(
    encoder: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor | None = None,
) -> dict:
    """ADC and PIC (percent) over a batch.

    Args:
        encoder: maps B×C×H×W to embeddings.
        images: B×C×H×W.
        heatmaps: B×H×W.
        targets: B×D targets, ``None`` = own embeddings.

    Returns:
        ``{"adc": float, "pic": float, "confidence": B list, "explained_confidence": B list}``.
    """
    images = check_images(images)
    tgt = resolve_targets(encoder, images, targets)
    y = F.cosine_similarity(embed(encoder, images), tgt, dim=1)
    o = F.cosine_similarity(embed(encoder, explanation_map(images, torch.as_tensor(heatmaps))), tgt, dim=1)
    drop = (y - o).clamp_min(0) / y.abs().clamp_min(1e-12)
    return {
        "adc": float(100 * drop.mean()),
        "pic": float(100 * (o > y).float().mean()),
        "confidence": y.tolist(),
        "explained_confidence": o.tolist(),
    }
