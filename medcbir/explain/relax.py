"""RELAX: explaining representations by masking and similarity, batched over images and masks.

Wickstrøm et al., "RELAX: Representation Learning Explainability", IJCV 2023
(arXiv:2112.10161; reference code ``relax-xai``). For N random masks M(n) and the similarity
s_n = cos(h, h̄_n) between a target embedding h and the embedding h̄_n of the masked image:

    importance   R_ij = Σ_n s_n M_ij(n) / Σ_n M_ij(n)
    uncertainty  U_ij = Σ_n M_ij(n) (s_n − R_ij)²
    U-RELAX           = R · [U ≤ median(U)]

These are exactly what relax-xai's running (weighted Welford) updates converge to — its
``sum_of_weights`` starts at 1e-10, which we keep — but computed from three sufficient statistics
(Σ M, Σ s M, Σ s² M) accumulated with one matmul per forward batch in float64, so there is no
Python loop per mask. (The paper writes R = (1/N) Σ s M; the mask-weighted mean differs only by
the per-pixel factor N / Σ M ≈ 1/p and is what the reference code computes.)

Masks follow relax-xai's ``mask_generator``: a grid×grid Bernoulli(p) grid, bilinear upsampling
to H×W (align_corners=False), reflect padding of grid//2 pixels and a random shift of 0..grid−1
pixels per axis. One set of masks is drawn from the seed and shared by every image of the batch;
the masked copies of all images go through the encoder in the same forward batches.

Adaptive mode keeps two half-estimates (even and odd masks). Every ``check_every`` masks it takes
their Pearson correlation r_half per image; the Spearman–Brown formula ρ = 2 r_half / (1 + r_half)
gives the reliability of the full estimate and √ρ its expected correlation with the infinite-mask
map. Drawing stops when min over images of √ρ ≥ ``target_r`` at two consecutive checks (or at
``n_masks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain.base import autocast, check_images, evaluating, resolve_targets

SUM_OF_WEIGHTS_INITIAL = 1e-10  # relax-xai's initial running weight (avoids 0/0)


@dataclass
class RelaxResult:
    """Everything RELAX estimates for a batch (all B×H×W float32)."""

    importance: torch.Tensor
    uncertainty: torch.Tensor
    u_relax: torch.Tensor
    n_masks_used: int


@dataclass
class MaskDraw:
    """The random part of N masks, drawn once from a seed (tiny: N×grid² + 2N numbers)."""

    grids: torch.Tensor  # N×1×g×g float {0,1}
    shift_x: torch.Tensor  # N int64 in [0, g)
    shift_y: torch.Tensor

    @classmethod
    def draw(cls, n: int, grid: int = 7, p: float = 0.5, seed: int = 0) -> "MaskDraw":
        gen = torch.Generator().manual_seed(int(seed))
        grids = (torch.rand(n, 1, grid, grid, generator=gen) < p).float()
        shift_x = torch.randint(0, grid, (n,), generator=gen)
        shift_y = torch.randint(0, grid, (n,), generator=gen)
        return cls(grids, shift_x, shift_y)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def masks(self, start: int, stop: int, shape: tuple[int, int]) -> torch.Tensor:
        """Masks ``start:stop`` as an n×H×W float32 tensor in [0, 1]."""
        grid = self.grids.shape[-1]
        pad = grid // 2
        up = F.interpolate(self.grids[start:stop], size=shape, mode="bilinear", align_corners=False)
        up = F.pad(up, (pad, pad, pad, pad), mode="reflect")[:, 0]
        n = up.shape[0]
        rows = self.shift_x[start:stop, None] + torch.arange(shape[0])
        cols = self.shift_y[start:stop, None] + torch.arange(shape[1])
        return up[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].contiguous()


def draw_masks(n: int, shape: tuple[int, int], grid: int = 7, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The exact n×H×W masks :func:`relax` uses for ``seed`` (for tests and figures)."""
    return MaskDraw.draw(n, grid, p, seed).masks(0, n, tuple(shape))


class _Moments:
    """Σ M, Σ (s−c) M, Σ (s−c)² M per image, in float64 (c: a per-image shift for stability)."""

    def __init__(self, b: int, hw: int):
        self.w = torch.zeros(hw, dtype=torch.float64)
        self.s1 = torch.zeros(b, hw, dtype=torch.float64)
        self.s2 = torch.zeros(b, hw, dtype=torch.float64)
        self.n = 0

    def add(self, centred: torch.Tensor, masks: torch.Tensor) -> None:
        # centred: B×m similarities minus c; masks: m×HW
        self.w += masks.sum(0)
        self.s1 += centred @ masks
        self.s2 += (centred * centred) @ masks
        self.n += masks.shape[0]

    def importance(self, shift: torch.Tensor) -> torch.Tensor:
        w0 = self.w + SUM_OF_WEIGHTS_INITIAL
        return (self.s1 + shift[:, None] * self.w) / w0

    def uncertainty(self, importance: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        d = importance - shift[:, None]
        u = self.s2 - 2 * d * self.s1 + d * d * self.w + SUM_OF_WEIGHTS_INITIAL * importance**2
        return u.clamp_min(0)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def relax_full(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_masks: int = 3000,
    seed: int = 0,
    grid: int = 7,
    p: float = 0.5,
    batch_size: int = 120,
    precision: str = "fp32",
    channels_last: bool | None = None,
    adaptive: bool = False,
    target_r: float = 0.98,
    check_every: int = 100,
    masks: torch.Tensor | None = None,
    device=None,
) -> RelaxResult:
    """RELAX importance, uncertainty and U-RELAX for a batch of images.

    Args:
        encoder: maps B×C×H×W in [0, 1] to embeddings.
        images: B×C×H×W float tensor.
        targets: B×D (or 1×D) target embeddings; ``None`` = each image's own embedding.
        n_masks: number of masks (the maximum in adaptive mode).
        seed: seeds the mask draw; the result is deterministic for a seed whatever the batch size.
        grid: cells per side of the Bernoulli grid (relax-xai's ``num_cells``).
        p: probability that a cell is kept (relax-xai's ``probablity_of_drop``: cells with
            uniform < p are 1).
        batch_size: masked images per encoder forward (all B images' copies share batches).
        precision: "fp32", or "bf16"/"fp16" autocast for the masked forwards.
        channels_last: run the forwards in channels-last memory format; ``None`` = only with
            reduced precision (where it measured faster on CPU; fp32 measured no faster).
        adaptive: stop drawing masks once the map has converged (see the module docstring).
        target_r: adaptive mode's target expected correlation with the infinite-mask map.
        check_every: adaptive mode's checkpoint spacing, in masks.
        masks: explicit N×H×W masks instead of drawing them (tests).
        device: a ``medcbir.device.Device``: images go to ``device.torch`` and its precision is
            used unless ``precision`` is given otherwise (the encoder must already be there).

    Example:
        >>> heat = relax_full(encoder, images, n_masks=500).importance  # doctest: +SKIP
    """
    images = check_images(images)
    if device is not None:
        images = images.to(device.torch)
        precision = device.precision if precision == "fp32" else precision
    if channels_last is None:
        channels_last = precision != "fp32"
    b, c, h, w = images.shape
    if n_masks < 1 and masks is None:
        raise ConfigError("n_masks must be at least 1")
    if not 0.0 < p < 1.0:
        raise ConfigError(f"p must be in (0, 1), got {p}")
    with evaluating(encoder):
        tgt = resolve_targets(encoder, images, targets, precision=precision)
        draw = None
        if masks is None:
            draw = MaskDraw.draw(n_masks, grid, p, seed)
            total = n_masks
        else:
            masks = masks.reshape(-1, h, w).float()
            total = masks.shape[0]
        per_batch = max(1, batch_size // b)  # masks per forward batch
        if adaptive:
            # checkpoints on whole forward batches
            per_batch = max(1, min(per_batch, check_every))
        moments = _Moments(b, h * w)
        halves = (_Moments(b, h * w), _Moments(b, h * w)) if adaptive else None
        shift = None
        converged_checks = 0
        next_check = check_every
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            encoder.to(memory_format=torch.channels_last)
        try:
            start = 0
            while start < total:
                stop = min(total, start + per_batch)
                m = draw.masks(start, stop, (h, w)) if draw is not None else masks[start:stop]
                m = m.to(images.device)
                x = (images[:, None] * m[None, :, None]).reshape(b * (stop - start), c, h, w)
                with torch.no_grad(), autocast(precision, images.device.type):
                    e = encoder(x.contiguous(memory_format=fmt)).float()
                s = F.cosine_similarity(e.view(b, stop - start, -1), tgt[:, None, :], dim=2).double().cpu()
                if shift is None:
                    shift = s.mean(1)
                centred = s - shift[:, None]
                flat = m.reshape(stop - start, h * w).double().cpu()
                moments.add(centred, flat)
                if halves is not None:
                    idx = torch.arange(start, stop)
                    for parity, half in enumerate(halves):
                        sel = (idx % 2) == parity
                        if sel.any():
                            half.add(centred[:, sel], flat[sel])
                start = stop
                if halves is not None and start >= next_check:
                    next_check += check_every
                    r_half = _pearson_rows(halves[0].importance(shift), halves[1].importance(shift)).clamp_min(0)
                    expected_r = torch.sqrt(2 * r_half / (1 + r_half)).min().item()
                    converged_checks = converged_checks + 1 if expected_r >= target_r else 0
                    if converged_checks >= 2:
                        break
        finally:
            if channels_last:
                encoder.to(memory_format=torch.contiguous_format)
    importance = moments.importance(shift)
    uncertainty = moments.uncertainty(importance, shift)
    imp = importance.float().view(b, h, w)
    unc = uncertainty.float().view(b, h, w)
    med = unc.flatten(1).median(1).values
    u_relax = imp * (unc <= med[:, None, None])
    return RelaxResult(imp, unc, u_relax, moments.n)


def relax(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_masks: int = 3000,
    seed: int = 0,
    **options,
) -> torch.Tensor:
    """RELAX importance maps (B×H×W float32); options as in :func:`relax_full`."""
    return relax_full(encoder, images, targets, n_masks=n_masks, seed=seed, **options).importance
