"""Guided Grad-CAM of a similarity score (Selvaraju et al., ICCV 2017), via captum.

Guided backpropagation (ReLU gradients clipped to positive) times the upsampled Grad-CAM map.
It applies to encoders whose non-linearities are ``nn.ReLU`` modules; in-place ReLUs break
captum's backward hooks, so the method runs on a copy of the encoder with ``inplace=False``.
"""

from __future__ import annotations

import copy
import warnings

import torch
from captum.attr import GuidedGradCam
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain.base import (
    SimilarityScore,
    check_images,
    evaluating,
    feature_layer,
    gradient_targets,
    to_heatmap,
)


def _non_inplace_copy(encoder: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A deep copy of the encoder with every ReLU out of place, and its feature layer."""
    layer = feature_layer(encoder)
    path = next((name for name, mod in encoder.named_modules() if mod is layer), None)
    clone = copy.deepcopy(encoder)
    relus = [m for m in clone.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ConfigError("guided Grad-CAM needs an encoder built from nn.ReLU modules")
    for m in relus:
        m.inplace = False
    return clone, clone.get_submodule(path) if path else feature_layer(clone)


def guided_gradcam(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """B×H×W guided Grad-CAM maps (|·| summed over channels).

    Args:
        encoder: an encoder with ``.feature_layer`` and ``nn.ReLU`` activations.
        images: B×C×H×W.
        targets: B×D targets; ``None`` = own embedding against a blank image's.
    """
    images = check_images(images)
    with evaluating(encoder):
        tgt, contrast = gradient_targets(encoder, images, targets)
    clone, layer = _non_inplace_copy(encoder)
    clone.eval()
    ggc = GuidedGradCam(SimilarityScore(clone), layer)
    with warnings.catch_warnings():
        # captum announces that it hooks the ReLUs; that is the method, not a problem
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attr = ggc.attribute(
            images.clone().requires_grad_(True), additional_forward_args=(tgt, contrast), interpolate_mode="bilinear"
        )
    return to_heatmap(attr, tuple(images.shape[-2:]), reduce="abs")
