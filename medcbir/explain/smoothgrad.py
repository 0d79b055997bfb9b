"""SmoothGrad of a similarity score (Smilkov et al., 2017): captum's NoiseTunnel over Saliency.

The map is the mean over noisy copies x + N(0, σ²) of |∂s/∂x|, σ = ``noise`` × (max − min of x),
summed over channels.
"""

from __future__ import annotations

import torch
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from medcbir.explain.base import SimilarityScore, check_images, evaluating, gradient_targets, to_heatmap


def smoothgrad(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_samples: int = 16,
    noise: float = 0.15,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """B×H×W SmoothGrad maps of the similarity score.

    Args:
        encoder: maps B×C×H×W to embeddings.
        images: B×C×H×W.
        targets: B×D targets; ``None`` = own embedding, explained against a blank image's
            (see :class:`~medcbir.explain.base.SimilarityScore`).
        n_samples: noisy copies per image.
        noise: noise standard deviation as a fraction of the image's value range.
        batch_size: noisy copies per forward/backward.
        seed: seeds the noise.
    """
    images = check_images(images)
    span = float((images.amax() - images.amin()).clamp_min(1e-6))
    with evaluating(encoder):
        tgt, contrast = gradient_targets(encoder, images, targets)
        nt = NoiseTunnel(Saliency(SimilarityScore(encoder)))
        torch.manual_seed(seed)  # captum draws its noise from the global generator
        attr = nt.attribute(
            images,
            nt_type="smoothgrad",
            nt_samples=n_samples,
            nt_samples_batch_size=max(1, batch_size // images.shape[0]),
            stdevs=noise * span,
            additional_forward_args=(tgt, contrast),
        )
    return to_heatmap(attr, tuple(images.shape[-2:]))
