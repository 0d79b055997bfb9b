"""RELAX's random masks: how they are drawn (i.i.d., antithetic, scrambled Sobol) and their moments.

A mask is relax-xai's ``mask_generator`` output: a grid×grid grid of Bernoulli(p) cells,
bilinearly upsampled to H×W (align_corners=False), reflect-padded by grid//2 pixels and cropped
at a random shift of 0..grid−1 pixels per axis. For a fixed shift the mask is *linear* in the
cells, ``M_ij = Σ_k w_k(shift, ij) G_k`` with weights summing to 1, so ``E[M_ij] = p``.

Samplings (all give every single mask the same distribution, so every sum over masks has the
same expectation as with i.i.d. draws — they only change how the masks are spread):

- ``"iid"``: relax-xai's draw, same RNG stream (grid, then x shifts, then y shifts).
- ``"antithetic"``: masks come in pairs (G, 1 − G) with the same shift. At p = 0.5, 1 − G has the
  distribution of G. Every pixel's mask weights then sum to exactly 1 per pair.
- ``"sobol"``: cell k is ``u_k < p`` and the shift ``⌊g·u⌋`` for points u of a scrambled Sobol
  sequence in g² + 2 dimensions (torch's linear-matrix scramble + digital shift, so each point is
  uniform on the unit cube): the cells are stratified across masks instead of independent.
- ``"sobol-antithetic"``: Sobol points for the first mask of each antithetic pair.

For split-half reliability (the adaptive stop) a draw is two independent interleaved replicates:
masks whose ``MaskDraw.halves`` entry is 0 come from one seed's stream, 1 from another's.

Owen, "Monte Carlo theory, methods and examples" (2013), ch. 8 (antithetic sampling, control
variates) and ch. 17 (randomised quasi-Monte Carlo).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError

SAMPLINGS = ("iid", "antithetic", "sobol", "sobol-antithetic")


def render_masks(grids: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """n×H×W float32 masks from n×1×g×g cell grids and per-mask shifts (relax-xai's pipeline)."""
    grid = grids.shape[-1]
    pad = grid // 2
    up = F.interpolate(grids.float(), size=tuple(shape), mode="bilinear", align_corners=False)
    up = F.pad(up, (pad, pad, pad, pad), mode="reflect")[:, 0]
    n = up.shape[0]
    rows = shift_x[:, None] + torch.arange(shape[0])
    cols = shift_y[:, None] + torch.arange(shape[1])
    return up[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].contiguous()


def _iid(n: int, grid: int, p: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grids = (torch.rand(n, 1, grid, grid, generator=gen) < p).float()
    shift_x = torch.randint(0, grid, (n,), generator=gen)
    shift_y = torch.randint(0, grid, (n,), generator=gen)
    return grids, shift_x, shift_y


def _sobol(n: int, grid: int, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u = torch.quasirandom.SobolEngine(grid * grid + 2, scramble=True, seed=int(seed)).draw(n).double()
    grids = (u[:, : grid * grid] < p).float().view(n, 1, grid, grid)
    shifts = (u[:, grid * grid :] * grid).long().clamp_(0, grid - 1)
    return grids, shifts[:, 0].contiguous(), shifts[:, 1].contiguous()


def _replicate(n: int, grid: int, p: float, seed: int, sampling: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One replicate of ``n`` masks; antithetic ones interleaved as G0, 1−G0, G1, 1−G1, ..."""
    antithetic = sampling.endswith("antithetic")
    base = (n + 1) // 2 if antithetic else n
    if sampling.startswith("sobol"):
        grids, sx, sy = _sobol(base, grid, p, seed)
    else:
        grids, sx, sy = _iid(base, grid, p, torch.Generator().manual_seed(int(seed)))
    if antithetic:
        grids = torch.stack([grids, 1.0 - grids], 1).flatten(0, 1)[:n]
        sx = sx.repeat_interleave(2)[:n]
        sy = sy.repeat_interleave(2)[:n]
    return grids, sx, sy


@dataclass
class MaskDraw:
    """The random part of N masks, drawn once from a seed (tiny: N×grid² + 2N numbers).

    Attributes:
        grids: N×1×g×g float cells in {0, 1}.
        shift_x, shift_y: N int64 shifts in [0, g).
        p: the cells' keep probability.
        sampling: one of :data:`SAMPLINGS`.
        halves: N int64 in {0, 1}: which independent replicate a mask belongs to.
    """

    grids: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    p: float = 0.5
    sampling: str = "iid"
    halves: torch.Tensor | None = None

    @classmethod
    def draw(cls, n: int, grid: int = 7, p: float = 0.5, seed: int = 0, sampling: str = "iid") -> "MaskDraw":
        """Draw ``n`` masks' cells and shifts.

        Args:
            n: number of masks.
            grid: cells per side.
            p: probability that a cell is kept.
            seed: the draw is a function of (n, grid, p, seed, sampling) alone.
            sampling: one of :data:`SAMPLINGS`; ``"iid"`` reproduces relax-xai's RNG stream.
        """
        if sampling not in SAMPLINGS:
            raise ConfigError(f"mask sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
        if sampling.endswith("antithetic") and abs(p - 0.5) > 1e-12:
            raise ConfigError(f"antithetic masks need p = 0.5 (1 − M has the distribution of M only then), got p = {p}")
        if sampling == "iid":
            grids, sx, sy = _iid(n, grid, p, torch.Generator().manual_seed(int(seed)))
            # consecutive pairs of i.i.d. masks are independent: alternate the halves
            return cls(grids, sx, sy, p, sampling, torch.arange(n) % 2)
        # two independent replicates (seeds differ), interleaved in blocks of two so that an
        # antithetic pair stays inside one replicate and every prefix is balanced
        n_a = sum(1 for i in range(n) if (i // 2) % 2 == 0)
        a = _replicate(n_a, grid, p, 2 * int(seed), sampling)
        b = _replicate(n - n_a, grid, p, 2 * int(seed) + 1, sampling)
        halves = (torch.arange(n) // 2) % 2
        grids = torch.empty(n, 1, grid, grid)
        sx = torch.empty(n, dtype=torch.long)
        sy = torch.empty(n, dtype=torch.long)
        for half, (g_, x_, y_) in enumerate((a, b)):
            sel = halves == half
            grids[sel], sx[sel], sy[sel] = g_, x_, y_
        return cls(grids, sx, sy, p, sampling, halves)

    @classmethod
    def every(cls, grid: int, p: float = 0.5, repeat: int = 1) -> "MaskDraw":
        """Every (cells, shift) configuration once (``repeat`` times), for exact expectations.

        At p = 0.5 all configurations are equally likely, so a plain average over this draw *is*
        the infinite-mask expectation. Only for tiny grids (2^(g²)·g² masks).
        """
        if grid > 3:
            raise ConfigError("enumerating every mask is only feasible for grid ≤ 3")
        if abs(p - 0.5) > 1e-12:
            raise ConfigError("the enumeration is uniform, i.e. the p = 0.5 distribution")
        cells = torch.tensor(list(itertools.product((0.0, 1.0), repeat=grid * grid)))
        shifts = torch.tensor(list(itertools.product(range(grid), repeat=2)))
        grids = cells.repeat_interleave(len(shifts), 0).view(-1, 1, grid, grid)
        sxy = shifts.repeat(len(cells), 1)
        n = grids.shape[0]
        grids = grids.repeat_interleave(repeat, 0)
        sxy = sxy.repeat_interleave(repeat, 0)
        return cls(grids, sxy[:, 0].contiguous(), sxy[:, 1].contiguous(), p, "every", torch.arange(n * repeat) % max(1, repeat))

    def __len__(self) -> int:
        return self.grids.shape[0]

    @property
    def grid(self) -> int:
        return self.grids.shape[-1]

    def masks(self, start: int, stop: int, shape: tuple[int, int]) -> torch.Tensor:
        """Masks ``start:stop`` as an n×H×W float32 tensor in [0, 1]."""
        return render_masks(self.grids[start:stop], self.shift_x[start:stop], self.shift_y[start:stop], tuple(shape))

    def cells(self, start: int, stop: int) -> torch.Tensor:
        """Masks ``start:stop``'s cells minus p (n×g², float64): the control variates' regressors."""
        return self.grids[start:stop].flatten(1).double() - self.p


def draw_masks(n: int, shape: tuple[int, int], grid: int = 7, p: float = 0.5, seed: int = 0, sampling: str = "iid") -> torch.Tensor:
    """The exact n×H×W masks :func:`medcbir.explain.relax` uses for ``seed`` (tests, figures)."""
    return MaskDraw.draw(n, grid, p, seed, sampling).masks(0, n, tuple(shape))


@lru_cache(maxsize=8)
def cell_weights(grid: int, shape: tuple[int, int]) -> torch.Tensor:
    """A_k(ij) = E_shift[w_k(shift, ij)]: each cell's mean weight in each pixel (g²×H×W, float64).

    Exact: one-hot cells pushed through the mask pipeline, averaged over every shift. The crop at
    shift (sx, sy) of the padded upsampled grid reads pixel (i + sx, j + sy), so the mean over the
    g × g shifts is a g × g box average of the padded image (one pooling, not g² renderings: at
    224 px this took seconds, the first thing a fresh `explain` process paid). For the control
    variates: ``E[(G_k − p) M_ij] = p (1 − p) A_k(ij)`` because cells are independent.
    """
    h, w = shape
    pad = grid // 2
    eye = torch.eye(grid * grid).view(-1, 1, grid, grid)
    up = F.interpolate(eye, size=(h, w), mode="bilinear", align_corners=False)
    up = F.pad(up, (pad, pad, pad, pad), mode="reflect").double()
    return F.avg_pool2d(up, grid, stride=1)[:, 0, :h, :w].contiguous()


def cell_weights_enumerated(grid: int, shape: tuple[int, int]) -> torch.Tensor:
    """:func:`cell_weights` by rendering every shift (the slow definition; tests compare the two)."""
    eye = torch.eye(grid * grid).view(-1, 1, grid, grid)
    total = torch.zeros(grid * grid, *shape, dtype=torch.float64)
    for sx, sy in itertools.product(range(grid), repeat=2):
        shift = torch.full((grid * grid,), sx), torch.full((grid * grid,), sy)
        total += render_masks(eye, shift[0], shift[1], tuple(shape)).double()
    return total / (grid * grid)
