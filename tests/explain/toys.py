"""Small encoders for the explanation tests (the real encoder lands from medcbir.train)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToyEncoder(nn.Module):
    """A conv encoder whose embedding depends only on the pixels inside ``region`` (H×W bool).

    The input is multiplied by the region first; convs have no bias, so every activation
    outside the region's receptive field is exactly zero.
    """

    def __init__(self, region: torch.Tensor, channels: int = 1, dim: int = 16, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("region", region.float()[None, None])
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(16, dim)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.feature_layer = nn.Sequential(self.conv2, self.relu2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.region
        x = self.relu1(self.conv1(x))
        a = self.feature_layer(x)
        pooled = a.flatten(2).mean(2)
        return F.normalize(self.fc(pooled), dim=1)


class SmallConvEncoder(nn.Module):
    """A generic small conv encoder (no region restriction) for agreement/equivalence tests."""

    def __init__(self, channels: int = 1, dim: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.feature_layer = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feature_layer(self.body(x))
        return F.normalize(self.fc(a.flatten(2).mean(2)), dim=1)


def blob_images(b: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """B×1×S×S smooth random images in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size // 4, size // 4, generator=gen)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - x.amin()) / (x.amax() - x.amin())
