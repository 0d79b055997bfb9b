"""Classical descriptors as encoders: a histogram of oriented gradients, alone or beside a thumbnail.

An encoder that has learned nothing must still retrieve well: it is what a user has before
training, and what every trained encoder is measured against. On real MR across subjects and on
the phantom, an area-downsampled thumbnail beats a randomly initialised ResNet (its features are
nearly collinear: cosine 0.99+ between any two images), and a histogram of oriented gradients
(HOG, Dalal & Triggs 2005) adds what a thumbnail lacks: edges and their directions, insensitive
to the intensity scale and the contrast of the scanner.

:class:`GradientHistogram` is HOG as a differentiable torch module (no weights): the image at
``size`` px, central-difference gradients, each pixel's magnitude split between the two nearest
of ``bins`` unsigned orientations, summed over ``cell``×``cell`` cells, normalised over 2×2-cell
blocks (L2, clipped at 0.2, renormalised: "L2-Hys"). :class:`ClassicDescriptor` concatenates the
L2-normalised thumbnail and the L2-normalised HOG with equal weight, so the cosine of two images
is the mean of their thumbnail and gradient cosines.

Both are differentiable, so every explanation method runs on them; the feature layer (the one
Grad-CAM hooks) is the cell histogram (orientation bins as channels).

Example:
    >>> import torch
    >>> x = torch.rand(2, 1, 224, 224)
    >>> GradientHistogram()(x).shape
    torch.Size([2, 1764])
    >>> ClassicDescriptor()(x).shape
    torch.Size([2, 2020])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.encoders.architecture import HOG_BINS, HOG_CELL, HOG_SIZE


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """n_out×n_in weights of an exact area resampling (each output pixel averages the input it
    covers, fractional overlaps included): ``A @ x @ A.T`` resizes an n_in×n_in image. A matrix
    product, unlike a non-integer adaptive pooling, exports to ONNX."""
    edges_out = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    lo = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(edges_out[1:, None], lo[None, :] + 1) - torch.maximum(edges_out[:-1, None], lo[None, :])).clamp(min=0)
    return (overlap / (n_in / n_out)).float()


class GradientHistogram(nn.Module):
    """Histogram of oriented gradients of each input channel, flattened (not normalised overall).

    Args:
        size: the image side the gradients are taken at (area resampling).
        cell: cell side in pixels (``size`` must be a multiple).
        bins: unsigned orientation bins over 0…π.
    """

    def __init__(self, size: int = HOG_SIZE, cell: int = HOG_CELL, bins: int = HOG_BINS) -> None:
        super().__init__()
        if size % cell or size // cell < 2:
            raise ValueError(f"HOG needs a size that is a multiple of the cell and ≥ 2 cells; got {size} px, {cell}-px cells")
        self.size, self.cell, self.bins = int(size), int(cell), int(bins)
        kx = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        self.register_buffer("kernel", torch.stack([kx, kx.t()])[:, None], persistent=False)
        self.features = nn.Identity()  # the cell histogram: what Grad-CAM hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            rows = area_matrix(x.shape[-2], self.size).to(x.device)
            cols = area_matrix(x.shape[-1], self.size).to(x.device)
            x = rows @ x @ cols.t()
        x = x.reshape(b * c, 1, self.size, self.size)
        # fp32 whatever the module was cast to (a bf16 copy for fast RELAX): orientations and
        # block norms need the precision, and the descriptor has no weights to speed up.
        grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.float())
        gx, gy = grad[:, 0], grad[:, 1]
        magnitude = torch.sqrt(gx * gx + gy * gy + 1e-12)
        # atan2(0, 0) is 0 in torch but NaN once exported to ONNX (y / x), and a NaN orientation becomes an
        # out-of-range bin index; x = 1 where both are zero gives torch's own answer, 0, on every runtime
        flat = (gx == 0) & (gy == 0)
        angle = torch.remainder(torch.atan2(gy, torch.where(flat, torch.ones_like(gx), gx)), math.pi)  # unsigned orientation
        position = angle / (math.pi / self.bins) - 0.5  # bin centres at (k + 0.5)·π/bins
        lower = torch.floor(position)
        upper_weight = position - lower
        lower_bin = torch.remainder(lower, self.bins).long()
        upper_bin = torch.remainder(lower + 1, self.bins).long()
        votes = torch.zeros(b * c, self.bins, self.size, self.size, dtype=x.dtype, device=x.device)
        votes.scatter_add_(1, lower_bin[:, None], (magnitude * (1 - upper_weight))[:, None])
        votes.scatter_add_(1, upper_bin[:, None], (magnitude * upper_weight)[:, None])
        cells = F.avg_pool2d(votes, self.cell) * (self.cell * self.cell)  # bins × cells × cells
        cells = self.features(cells)
        n = cells.shape[-1]
        blocks = torch.cat(
            [cells[:, :, i : i + n - 1, j : j + n - 1] for i in (0, 1) for j in (0, 1)], dim=1
        )  # (4·bins) × (n−1) × (n−1): each block's 2×2 cells
        blocks = blocks.permute(0, 2, 3, 1)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + 1e-10)
        blocks = blocks.clamp(max=0.2)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + 1e-10)
        return blocks.reshape(b, -1)


class ClassicDescriptor(nn.Module):
    """A thumbnail and a HOG side by side, each L2-normalised (equal weight in the cosine).

    Args:
        grid: the thumbnail side N (N×N per channel).
        size, cell, bins: of the :class:`GradientHistogram`.
    """

    def __init__(self, grid: int = 16, size: int = HOG_SIZE, cell: int = HOG_CELL, bins: int = HOG_BINS) -> None:
        super().__init__()
        self.grid = int(grid)
        self.hog = GradientHistogram(size, cell, bins)
        self.features = self.hog.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thumb = F.normalize(F.adaptive_avg_pool2d(x.float(), self.grid).flatten(1), dim=1)
        hog = F.normalize(self.hog(x), dim=1)
        return torch.cat([thumb, hog], dim=1) / math.sqrt(2.0)
