"""Vanilla gradient ("GRAD") of a similarity score (Simonyan et al., ICLR workshop 2014), via captum.

The map is |∂s/∂x| summed over channels, s = cosine(encoder(x), target); own-embedding targets
are explained against a blank image's embedding (see
:class:`~medcbir.explain.base.SimilarityScore`). One forward/backward per batch.
"""

from __future__ import annotations

import torch
from captum.attr import Saliency
from torch import nn

from medcbir.explain.base import SimilarityScore, check_images, evaluating, gradient_targets, to_heatmap


def gradient(encoder: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """B×H×W absolute-gradient maps of the similarity score.

    Args:
        encoder: maps B×C×H×W to embeddings.
        images: B×C×H×W.
        targets: B×D targets; ``None`` = own embedding against a blank image's.
    """
    images = check_images(images)
    with evaluating(encoder):
        tgt, contrast = gradient_targets(encoder, images, targets)
        attr = Saliency(SimilarityScore(encoder)).attribute(images.clone().requires_grad_(True), abs=True, additional_forward_args=(tgt, contrast))
    return to_heatmap(attr, tuple(images.shape[-2:]))
