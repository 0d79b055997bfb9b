"""A frozen base network followed by a linear map: how archive statistics and learned heads become encoders.

Adapting an encoder to an archive (:mod:`medcbir.train.adapt`) ends in a linear map of the base
encoder's L2-normalised embedding: centring, PCA-whitening, a whitening learned from positive
pairs. :class:`ProjectedBackbone` is that map as a network, so the adapted encoder is an encoder
like any other: ``y = W · normalize(base(x)) + b``, then L2-normalised by the
:class:`~medcbir.encoders.module.EncoderModule` around it.

The architecture record nests the base's record (:func:`projected_arch`); the state dict holds
the base's weights under ``base.`` and the map under ``projection.``, so the fingerprint covers
both, and a weightless base (the ``classic`` descriptor, a thumbnail) is rebuilt from its record.
The feature layer (what Grad-CAM and heads hook) is the base's; the map exports to ONNX as one
``Gemm``.

Example:
    >>> import torch
    >>> from medcbir.encoders.backbones import Thumbnail
    >>> net = ProjectedBackbone(Thumbnail(4), dim_in=16, dim_out=8)
    >>> net(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTED = "projected"


def projected_arch(base_arch: dict, dim: int) -> dict:
    """The architecture record of a base (its own record, nested) followed by a D→``dim`` linear map."""
    return {
        "backbone": PROJECTED,
        "base": dict(base_arch),
        "in_channels": int(base_arch["in_channels"]),
        "dim": int(dim),
        "stem": base_arch.get("stem", "none"),
    }


def innermost_arch(arch: dict) -> dict:
    """The record of the network at the bottom of nested projections (the arch itself if none)."""
    while arch.get("backbone") == PROJECTED:
        arch = arch["base"]
    return arch


class ProjectedBackbone(nn.Module):
    """``W · normalize(base(x)) + b``: a linear map of the base encoder's unit-norm embedding.

    Args:
        base: the base network (its output is L2-normalised before the map, as in its index).
        dim_in: the base's embedding dimension.
        dim_out: the output dimension.
    """

    def __init__(self, base: nn.Module, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.base = base
        self.projection = nn.Linear(int(dim_in), int(dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(F.normalize(self.base(x).float(), dim=1))

    @torch.no_grad()
    def set_map(self, weight, bias) -> "ProjectedBackbone":
        """Load ``weight`` (dim_out × dim_in) and ``bias`` (dim_out), e.g. fitted with numpy."""
        self.projection.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.projection.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return self
