"""Grad-CAM of a similarity score (Selvaraju et al., ICCV 2017), via captum's LayerGradCam.

On the encoder's last conv block A (``encoder.feature_layer``): α_k = mean_ij ∂s/∂A_k,ij and
map = ReLU(Σ_k α_k A_k), bilinearly upsampled to the input resolution.
"""

from __future__ import annotations

import torch
from captum.attr import LayerGradCam
from torch import nn

from medcbir.explain.base import (
    SimilarityScore,
    check_images,
    evaluating,
    feature_layer,
    gradient_targets,
    to_heatmap,
)


def gradcam(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """B×H×W Grad-CAM maps of the similarity score.

    Args:
        encoder: an encoder with ``.feature_layer``.
        images: B×C×H×W.
        targets: B×D targets; ``None`` = own embedding against a blank image's (the own
            cosine has zero gradient at its maximum).
        relu: keep only positive evidence (the paper's ReLU).
    """
    images = check_images(images)
    with evaluating(encoder):
        tgt, contrast = gradient_targets(encoder, images, targets)
        cam = LayerGradCam(SimilarityScore(encoder), feature_layer(encoder))
        attr = cam.attribute(images, additional_forward_args=(tgt, contrast), relu_attributions=relu)
    return to_heatmap(attr, tuple(images.shape[-2:]))
