"""SmoothGrad-IG ("SIG"): Integrated Gradients averaged over noisy copies of the input, via captum.

The map is the mean over x̃ = x + N(0, σ²) of IG(x̃) (black baseline), σ = ``noise`` × (max − min
of x), channels summed; the combination Arun et al. (Radiology: AI 2021) compare beside SmoothGrad
and IG. Costs ``n_samples × n_steps`` forward/backward passes per image.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients, NoiseTunnel
from torch import nn

from medcbir.explain.base import SimilarityScore, check_images, evaluating, resolve_targets, to_heatmap


def smoothgrad_ig(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_samples: int = 8,
    n_steps: int = 16,
    noise: float = 0.15,
    internal_batch_size: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """B×H×W SmoothGrad-IG maps of ``cosine(encoder(x), target)``.

    Args:
        encoder: maps B×C×H×W to embeddings.
        images: B×C×H×W.
        targets: B×D targets, ``None`` = own embeddings (IG integrates from the baseline).
        n_samples: noisy copies per image.
        n_steps: Riemann steps of each path integral.
        noise: noise standard deviation as a fraction of the images' value range.
        internal_batch_size: images per forward/backward.
        seed: seeds the noise.
    """
    images = check_images(images)
    span = float((images.amax() - images.amin()).clamp_min(1e-6))
    with evaluating(encoder):
        tgt = resolve_targets(encoder, images, targets)
        nt = NoiseTunnel(IntegratedGradients(SimilarityScore(encoder)))
        torch.manual_seed(seed)  # captum draws its noise from the global generator
        attr = nt.attribute(
            images,
            nt_type="smoothgrad",
            nt_samples=n_samples,
            nt_samples_batch_size=1,
            stdevs=noise * span,
            baselines=0.0,
            additional_forward_args=(tgt,),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
        )
    return to_heatmap(attr, tuple(images.shape[-2:]))
