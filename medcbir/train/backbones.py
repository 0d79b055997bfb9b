"""Backbones: MONAI 2D ResNets with the standard ImageNet stem, pooled to an embedding.

MONAI's ``resnet18/34/50`` default to a stride-1 first convolution (they were written for 3D
medical volumes). At the same input size that is four times the compute of the standard
ResNet (6.9 vs 1.7 GMAC at 224 px; measured here ~5x slower on one CPU thread), so the
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

from torch import nn

from medcbir.errors import ConfigError

# backbone name -> pooled feature dimension
BACKBONES: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def backbone_dim(name: str) -> int:
    """Embedding dimension of a named backbone.

    Args:
        name: one of :data:`BACKBONES`.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


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
    from monai.networks.nets import resnet

    factory = getattr(resnet, name)
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


def feature_layer(backbone: nn.Module) -> nn.Module:
    """The last convolutional block of a backbone (the layer Grad-CAM and Clustered-CAM hook)."""
    return backbone.layer4
