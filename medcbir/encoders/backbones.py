"""Backbones: MONAI 2D ResNets with the standard ImageNet stem, pooled to an embedding.

MONAI's ``resnet18/34/50`` default to a stride-1 first convolution (they were written for 3D
medical volumes). At the same input size that is four times the compute of the standard
ResNet (6.9 vs 1.7 GMAC at 224 px; much slower on a CPU), so the
backbones are built with the standard stem: a 7×7 stride-2 convolution followed by the
3×3 stride-2 max-pool. The classification layer is dropped; the output is the globally
average-pooled last block (512-d for ResNet-18/34, 2048-d for ResNet-50).

Example:
    >>> import torch
    >>> net = build_backbone("resnet18", in_channels=1)
    >>> net(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2, 512])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.encoders.architecture import backbone_dim
from medcbir.encoders.classic import ClassicDescriptor, GradientHistogram
from medcbir.encoders.projection import ProjectedBackbone
from medcbir.errors import ConfigError

GEM_P = 3.0


def gem(features: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalized-mean pooling of B×C×h×w maps to B×C: (mean x^p)^(1/p); p=1 is the average."""
    return features.float().clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class PooledResNet(nn.Module):
    """A MONAI ResNet trunk with GeM or multi-layer pooling instead of the global average.

    Args:
        net: the ResNet from :func:`build_backbone` (its own average pool is bypassed).
        pooling: ``"gem"`` or ``"multi"``.
    """

    def __init__(self, net: nn.Module, pooling: str) -> None:
        super().__init__()
        self.net = net
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        x = net.layer2(net.layer1(x))
        stage3 = net.layer3(x)
        stage4 = net.layer4(stage3)
        if self.pooling == "gem":
            return gem(stage4)
        return torch.cat([F.normalize(gem(stage3), dim=1), F.normalize(gem(stage4), dim=1)], dim=1)


class Thumbnail(nn.Module):
    """The baseline "encoder": the preprocessed image area-downsampled to N×N, flattened.

    No weights. Differentiable, so every explanation method runs on it; its feature layer is
    the input itself (Grad-CAM on a thumbnail is gradient × input, pooled per channel).

    Args:
        grid: N, the side of the thumbnail.
    """

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = int(grid)
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


def build_backbone(name: str = "resnet18", in_channels: int = 1) -> nn.Module:
    """A randomly initialised 2D MONAI ResNet mapping B×C×H×W to pooled B×D features.

    The result is seeded by the caller's torch RNG (wrap in ``torch.random.fork_rng`` and
    ``torch.manual_seed`` for a deterministic initialisation).

    Args:
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        in_channels: number of input channels (one per Hounsfield window).
    """
    backbone_dim(name)  # validates the name
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, not {in_channels}")
    factory = getattr(_monai_resnet(), name)
    return factory(
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        no_max_pool=False,
        feed_forward=False,
        # Not in-place: attribution methods (captum, Grad-CAM hooks) need the activations intact.
        act=("relu", {"inplace": False}),
    )


def _monai_resnet():
    """MONAI's ResNet module, imported without transformers.

    MONAI's package init imports every one of its modules; one (TransChex) imports transformers
    when it is installed, which costs more than torch itself, in every process that builds a
    backbone. An entry of None in ``sys.modules`` makes that import fail, so MONAI keeps its
    placeholder instead; the entry is removed afterwards, so a Hugging Face encoder still imports
    transformers as usual.
    """
    import sys

    block = "transformers" not in sys.modules
    if block:
        sys.modules["transformers"] = None
    try:
        from monai.networks.nets import resnet
    finally:
        if block and sys.modules.get("transformers", 0) is None:
            del sys.modules["transformers"]
    return resnet


def feature_layer(backbone: nn.Module) -> nn.Module:
    """The last convolutional block of a backbone (the layer Grad-CAM and Clustered-CAM hook)."""
    if isinstance(backbone, (Thumbnail, ClassicDescriptor, GradientHistogram)):
        return backbone.features
    if isinstance(backbone, ProjectedBackbone):
        return feature_layer(backbone.base)
    if isinstance(backbone, PooledResNet):
        return backbone.net.layer4
    return backbone.layer4
