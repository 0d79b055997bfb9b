"""Trivial saliency maps: what any explanation must beat to say something about the encoder.

Each map ignores the encoder (and the target) entirely, so a method that scores no better than
one of them explains nothing the image or the frame did not already show:

    noise      uniform random values (seeded): the chance level of every metric;
    centre     a centred Gaussian (σ = ¼ of the shorter side): the centre bias of organs in scans;
    intensity  the image itself (mean over channels): "bright things matter";
    edges      the Sobel gradient magnitude of the image: "contours matter".

They share the methods' signature, ``fn(encoder, images B×C×H×W, targets=None, **options) ->
B×H×W float32``, so :mod:`medcbir.explain.evaluation.scoring` scores them with exactly the same code.

Example:
    >>> import torch
    >>> TRIVIAL_MAPS["centre"](None, torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import torch
from kornia.filters import sobel

from medcbir.explain.base import check_images


def noise_map(encoder, images: torch.Tensor, targets=None, seed: int = 0, **_) -> torch.Tensor:
    """Uniform random values in [0, 1), one independent draw per image, fixed by ``seed``."""
    images = check_images(images)
    b, _, h, w = images.shape
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(b, h, w, generator=gen)


def centre_map(encoder, images: torch.Tensor, targets=None, sigma: float = 0.25, **_) -> torch.Tensor:
    """A Gaussian centred on the image, σ = ``sigma`` × the shorter side (same for every image)."""
    images = check_images(images)
    b, _, h, w = images.shape
    s = sigma * min(h, w)
    y = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * s * s))
    return g.expand(b, h, w).contiguous()


def intensity_map(encoder, images: torch.Tensor, targets=None, **_) -> torch.Tensor:
    """The image itself (mean over channels)."""
    return check_images(images).mean(1).contiguous()


def edge_map(encoder, images: torch.Tensor, targets=None, **_) -> torch.Tensor:
    """Sobel gradient magnitude of the channel-mean image."""
    images = check_images(images)
    return sobel(images.mean(1, keepdim=True))[:, 0].contiguous()


TRIVIAL_MAPS = {
    "noise": noise_map,
    "centre": centre_map,
    "intensity": intensity_map,
    "edges": edge_map,
}

__all__ = ["TRIVIAL_MAPS", "centre_map", "edge_map", "intensity_map", "noise_map"]
