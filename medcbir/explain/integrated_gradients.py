"""Integrated Gradients of a similarity score (Sundararajan et al., ICML 2017), via captum.

IG_i(x) = (x_i − x'_i) ∫₀¹ ∂s(x' + α(x − x'))/∂x_i dα with a black baseline x' = 0 and
s = cosine(encoder(·), target); channels are summed into one signed map per image.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from torch import nn

from medcbir.explain.base import SimilarityScore, check_images, evaluating, resolve_targets, to_heatmap


def integrated_gradients(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 64,
    baseline: float = 0.0,
) -> torch.Tensor:
    """B×H×W Integrated-Gradients maps of ``cosine(encoder(x), target)``.

    Args:
        encoder: maps B×C×H×W to embeddings.
        images: B×C×H×W.
        targets: B×D target embeddings, ``None`` = own embeddings (IG integrates from the
            baseline, so the own-embedding score has a non-zero path gradient).
        n_steps: Riemann steps of the path integral.
        internal_batch_size: images per forward/backward.
        baseline: constant baseline image value.
    """
    images = check_images(images)
    with evaluating(encoder):
        tgt = resolve_targets(encoder, images, targets)
        ig = IntegratedGradients(SimilarityScore(encoder))
        attr = ig.attribute(
            images,
            baselines=baseline,
            additional_forward_args=(tgt,),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
        )
    return to_heatmap(attr, tuple(images.shape[-2:]))
