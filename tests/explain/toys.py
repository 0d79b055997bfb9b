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


class PatchEncoder(nn.Module):
    """A hand-built, parameter-free encoder: the image's 4×4 cell means, flattened.

    Cosine similarity between two embeddings is the (normalised) dot product of their cell
    means, so with :func:`matched_pairs` it is decided by the cells of the shared region.
    """

    def __init__(self, cell: int = 4):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.cell).flatten(1)


def matched_pairs(b: int, region: torch.Tensor, cell: int = 4, outside: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(neighbours, queries), each B×1×H×W, that share a texture inside ``region`` only.

    Cell values are zero-mean (a pixel set to 0 carries no signal): inside the region both images
    hold the same ±(0.6..1) cells; outside each has its own independent ±``outside`` cells, which
    only dilute the similarity. ``region`` (H×W bool) should be aligned to the cell grid.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = region.shape

    def cells(lo: float = 0.0):
        u = torch.rand(b, 1, h // cell, w // cell, generator=gen) * 2 - 1
        u = torch.sign(u) * (lo + (1 - lo) * u.abs())
        return u.repeat_interleave(cell, 2).repeat_interleave(cell, 3)

    shared, mine, theirs = cells(0.6), cells(), cells()
    r = region.float()
    return shared * r + outside * mine * (1 - r), shared * r + outside * theirs * (1 - r)
