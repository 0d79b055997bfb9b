"""Guided backpropagation of a similarity score (Springenberg et al., ICLR workshop 2015), via captum.

The gradient of s = cosine(encoder(x), target) with every ReLU's backward pass clipped to
positive gradients; |·| summed over channels. Like guided Grad-CAM (whose guided part this is)
it runs on a copy of the encoder with out-of-place ReLUs, which captum's hooks need.
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import GuidedBackprop
from torch import nn

from medcbir.explain.base import SimilarityScore, check_images, evaluating, gradient_targets, to_heatmap
from medcbir.explain.guided_gradcam import _non_inplace_copy


def guided_backprop(encoder: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """B×H×W guided-backpropagation maps.

    Args:
        encoder: an encoder built from ``nn.ReLU`` modules.
        images: B×C×H×W.
        targets: B×D targets; ``None`` = own embedding against a blank image's.
    """
    images = check_images(images)
    with evaluating(encoder):
        tgt, contrast = gradient_targets(encoder, images, targets)
    clone, _ = _non_inplace_copy(encoder)
    clone.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attr = GuidedBackprop(SimilarityScore(clone)).attribute(images.clone().requires_grad_(True), additional_forward_args=(tgt, contrast))
    return to_heatmap(attr, tuple(images.shape[-2:]), reduce="abs")
