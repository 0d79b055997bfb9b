"""Occlusion of a similarity score (Zeiler & Fergus, ECCV 2014), via captum.

A window of the baseline value slides over the image; each pixel gets the mean drop of
s = cosine(encoder(x), target) over the windows covering it.
"""

from __future__ import annotations

import torch
from captum.attr import Occlusion
from torch import nn

from medcbir.explain.base import SimilarityScore, check_images, evaluating, resolve_targets, to_heatmap


def occlusion(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    window: int | None = None,
    stride: int | None = None,
    baseline: float = 0.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """B×H×W occlusion maps.

    Args:
        encoder: maps B×C×H×W to embeddings.
        images: B×C×H×W.
        targets: B×D targets, ``None`` = own embeddings.
        window: occluding square's side in pixels (default H/8).
        stride: window step (default window/2).
        baseline: value the window is filled with.
        batch_size: occluded images per forward.
    """
    images = check_images(images)
    b, c, h, w = images.shape
    window = window or max(2, h // 8)
    stride = stride or max(1, window // 2)
    with evaluating(encoder):
        tgt = resolve_targets(encoder, images, targets)
        occ = Occlusion(SimilarityScore(encoder))
        with torch.no_grad():
            attr = occ.attribute(
                images,
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=baseline,
                additional_forward_args=(tgt,),
                perturbations_per_eval=max(1, batch_size // b),
            )
    # every channel holds the same per-window drop: average rather than multiply by C
    return to_heatmap(attr, (h, w)) / c
