"""SimSiam: siamese representation learning with a stop-gradient, no negatives.

Chen, X. & He, K. (2021). "Exploring Simple Siamese Representation Learning." CVPR,
arXiv:2011.10566. Both views go through the backbone and a 3-layer projector (z); a 2-layer
bottleneck predictor maps one view's z to p, and the loss is the negative cosine similarity
between p of one view and the *stop-gradient* z of the other, symmetrised:

    L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2,   D(p, z) = -cos(p, z).

The reference CT-liver method (Wickstrøm et al. 2023) is SimSiam with Hounsfield-window views
(:mod:`medcbir.train.views`).

Example:
    >>> import torch
    >>> from medcbir.encoders.backbones import build_backbone
    >>> method = SimSiam(build_backbone("resnet18"), dim=512, proj_dim=256, pred_dim=64)
    >>> x1, x2 = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)
    >>> loss = method([x1, x2]); loss.backward()
    >>> -1.0 <= float(loss) <= 1.0
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.train.base import SSLMethod, mlp


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean of -cos(p_i, z_i) with the gradient stopped through ``z``."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The symmetrised SimSiam loss, in [-1, 1]."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


class SimSiam(SSLMethod):
    """SimSiam heads and loss.

    Args:
        backbone: network to train.
        dim: backbone output dimension.
        proj_dim: projector width and output (2048 in the paper).
        pred_dim: predictor bottleneck (512 in the paper).
    """

    name = "simsiam"

    def __init__(self, backbone: nn.Module, dim: int, proj_dim: int = 2048, pred_dim: int = 512) -> None:
        super().__init__(backbone, dim)
        # Paper: 3 layers, BN on every layer, the output BN without affine parameters.
        self.projector = mlp([dim, proj_dim, proj_dim, proj_dim], last_bn=True, last_bn_affine=False)
        self.predictor = mlp([proj_dim, pred_dim, proj_dim], last_bn=False)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x1, x2 = views[0], views[1]
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        return simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2)
