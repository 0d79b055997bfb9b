"""Rotation prediction: a 4-way classification pretext task.

Gidaris, S., Singh, P. & Komodakis, N. (2018). "Unsupervised Representation Learning by
Predicting Image Rotations." ICLR, arXiv:1803.07728. Every image is rotated by 0°, 90°, 180°
and 270°; a linear head on the backbone predicts which, trained with cross entropy. Anatomy
has a canonical orientation in CT slices, so the task forces the backbone to find it.

Only the first augmented view is used (``n_views = 1``); the batch seen by the backbone is
four times the image batch.

Example:
    >>> import torch
    >>> from medcbir.encoders.backbones import build_backbone
    >>> method = RotationPrediction(build_backbone("resnet18"), dim=512)
    >>> loss = method([torch.rand(4, 1, 64, 64)])
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.train.base import SSLMethod


def rotate_four(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four right-angle rotations of a B×C×S×S batch and their labels (0..3), rotation-major."""
    rotated = torch.cat([torch.rot90(images, r, dims=(2, 3)) for r in range(4)], dim=0)
    labels = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return rotated, labels


class RotationPrediction(SSLMethod):
    """Rotation-prediction head and loss.

    Args:
        backbone: network to train.
        dim: backbone output dimension.
    """

    name = "rotation"
    n_views = 1

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__(backbone, dim)
        self.classifier = nn.Linear(dim, 4)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        rotated, labels = rotate_four(views[0])
        return F.cross_entropy(self.classifier(self.backbone(rotated)).float(), labels)
