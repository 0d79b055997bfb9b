"""Backbones: MONAI 2D ResNets with the standard stride-2 stem + max-pool, pooled output."""

from __future__ import annotations

import pytest
import torch

from medcbir.errors import ConfigError
from medcbir.encoders.architecture import BACKBONES
from medcbir.encoders.backbones import build_backbone, feature_layer


def test_resnet18_has_the_standard_stem_and_pooled_512d_output():
    net = build_backbone("resnet18", in_channels=1).eval()
    assert net.conv1.stride == (2, 2) and net.conv1.kernel_size == (7, 7)
    assert net.no_max_pool is False and net.fc is None
    activations = {}
    feature_layer(net).register_forward_hook(lambda m, i, o: activations.setdefault("x", o))
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 512)
    # Stride-2 conv, max-pool and three stride-2 stages: 64 px → 2×2 in the last block
    # (a stride-1 MONAI stem would leave 4×4, four times the compute).
    assert activations["x"].shape == (2, 512, 2, 2)


def test_channels_and_dimensions_of_every_backbone():
    assert BACKBONES == {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
    net = build_backbone("resnet50", in_channels=2).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 2, 32, 32)).shape == (2, 2048)
    assert sum(1 for _ in build_backbone("resnet34").layer3) == 6


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("vgg16")
