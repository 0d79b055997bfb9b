"""Training views: Hounsfield windows of resized HU tensors, then batched kornia augmentations.

Wickstrøm et al. (2023), "A clinically motivated self-supervised approach for content-based
image retrieval of CT liver images" (Computerized Medical Imaging and Graphics 107, 102239):
each CT slice is clipped to two Hounsfield windows, a narrow liver window (50…150 HU) and a
wide one (−200…300 HU), *before* augmentation, so the two SimSiam views differ in window as
well as in crop, flip and intensity. At test time only the wide window is used.

Windowing happens here, per item, on the cached geometry (``Preprocessing.geometry``) with the
(lo, hi) each item's own window context gives (:meth:`HUDataset.ranges`), then MONOCHROME1
inversion: exactly what ``Preprocessing.apply`` computes at test time, so the trained encoder
sees the inputs it will be indexed with. A Hounsfield-window view changes the CT rule of the
encoder's window policy only; other modalities keep their own normalisation in every view.

Example:
    >>> import torch
    >>> hu = torch.full((2, 1, 64, 64), 200.0)            # soft tissue at 200 HU
    >>> narrow, wide = window_views(hu, parse_views("hu-narrow,hu-wide"))
    >>> float(narrow.max()), round(float(wide.max()), 2)   # saturates vs does not
    (1.0, 0.8)
    >>> views = BatchAugment(size=64)(narrow)             # crop, flip, jitter, blur
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcbir.errors import ConfigError
from medcbir.imaging.policy import WindowPolicy
from medcbir.imaging.windows import WINDOWS, apply_window

# view name -> window name (medcbir.imaging.WINDOWS); any window name is accepted as a view too.
VIEWS: dict[str, str] = {"hu-narrow": "ct-liver-narrow", "hu-wide": "ct-liver-wide"}


def view_policy(window: str, encoder_policy) -> str:
    """The policy of a Hounsfield-window view: ``window`` for CT, the encoder's rule otherwise."""
    base = WindowPolicy.parse(encoder_policy)
    rules = [f"CT={window}"] + [f"{m}={w if isinstance(w, str) else f'{w[0]:g}:{w[1]:g}'}" for m, w in base.rules if m != "CT"]
    return ",".join(rules)


def window_batch(images: torch.Tensor, ranges: torch.Tensor, inverted: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item windowing: B×1×S×S modality units → B×C×S×S in [0, 1].

    Args:
        images: B×1×S×S (any float dtype).
        ranges: B×C×2 (lo, hi) per item and channel.
        inverted: B bools (MONOCHROME1: 1 − x after windowing).
    """
    x = images.float()
    lo = ranges[..., 0].to(x.device)[:, :, None, None]
    hi = ranges[..., 1].to(x.device)[:, :, None, None]
    out = ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
    if inverted is not None and bool(inverted.any()):
        flip = inverted.to(x.device)[:, None, None, None]
        out = torch.where(flip, 1.0 - out, out)
    return out


def parse_views(spec: str | Sequence[str] | None, default_windows: Sequence = ("ct-liver-wide",)) -> list[tuple]:
    """The window(s) of each of the two views.

    Args:
        spec: ``"hu-narrow,hu-wide"`` (or a list of names): one window per view; names of
            :data:`VIEWS` or of ``medcbir.imaging.WINDOWS``. None: both views use
            ``default_windows`` (the encoder's preprocessing windows; standard SimSiam).
        default_windows: the preprocessing windows, used when ``spec`` is None.

    Returns:
        Two tuples of windows (each view's channels).
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return [tuple(default_windows), tuple(default_windows)]
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if len(names) != 2:
        raise ConfigError(f"--views needs exactly two views (e.g. hu-narrow,hu-wide), got {len(names)}")
    known = WINDOWS
    windows = []
    if len(default_windows) != 1:
        raise ConfigError("Hounsfield-window views need a one-window (one-channel) encoder")
    for name in names:
        window = VIEWS.get(name, name)
        if window not in known:
            raise ConfigError(f"unknown view {name!r}; use {', '.join(VIEWS)} or a window name ({', '.join(known)})")
        windows.append((view_policy(window, default_windows[0]),))
    return windows


def window_views(hu: torch.Tensor, views: Sequence[Sequence]) -> list[torch.Tensor]:
    """Window a batch of CT images (Hounsfield units) once per view, with fixed windows.

    For a batch known to be CT only; the trainer windows per item (:func:`window_batch`).
    A window policy contributes its CT window.

    Args:
        hu: B×1×S×S float tensor in Hounsfield units (already resized).
        views: per view, the tuple of windows or policies (one output channel each).

    Returns:
        One B×C×S×S float32 tensor in [0, 1] per view.
    """
    hu = hu.float()

    def ct(window):
        resolved = WindowPolicy.parse(window).window_for("CT")
        if resolved is None:
            raise ConfigError(f"window policy {window} has no rule for CT")
        return resolved

    return [torch.cat([apply_window(hu, ct(w)) for w in windows], dim=1) for windows in views]


def blur_kernel(size: int) -> int:
    """An odd Gaussian-blur kernel of about 10 % of the image side (SimCLR's choice)."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


class BatchAugment(nn.Module):
    """The standard SSL augmentations, batched on tensors (kornia), one draw per sample.

    Random resized crop (scale 0.2–1.0), horizontal flip, brightness/contrast jitter
    (p = 0.8), Gaussian blur (σ 0.1–2.0, p = 0.5) and, optionally, a small rotation.
    Random draws come from torch's global RNG, so a seeded run is reproducible and a resumed
    run continues the same sequence (the trainer checkpoints the RNG state).

    Args:
        size: output side in pixels.
        scale: crop area range relative to the image.
        jitter: brightness and contrast jitter strength.
        blur: apply Gaussian blur.
        rotation: maximum rotation in degrees (0 = none).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        jitter: float = 0.4,
        blur: bool = True,
        rotation: float = 0.0,
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        steps: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=scale),
            K.RandomHorizontalFlip(),
        ]
        if jitter > 0:
            steps.append(K.ColorJitter(brightness=jitter, contrast=jitter, p=0.8))
        if blur:
            steps.append(K.RandomGaussianBlur(blur_kernel(size), (0.1, 2.0), p=0.5))
        if rotation > 0:
            steps.append(K.RandomRotation(float(rotation), p=0.5))
        self.steps = nn.Sequential(*steps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.steps(images).clamp_(0.0, 1.0)


class ArchiveAugment(nn.Module):
    """Augmentations that model how one archive's images of the same anatomy differ.

    Batched on tensors (kornia), one draw per sample, from torch's global RNG (seeded, resumable):

    - field of view and positioning: a random affine (scale 0.75–1.3, translation ±10 %,
      rotation ±10°), the area outside the image dark;
    - intensity response: gamma 0.7–1.4 (MR-like contrast differences); the window itself is
      jittered before windowing by :func:`jitter_ranges` (HU calibration, contrast phase);
    - noise (σ up to 0.05 of the window), blur or sharpening (soft vs sharp kernels);
    - random erasing (a lesion, a metal artefact or a cut-off region must not decide).

    No flips: anatomy is not left-right symmetric (the liver is on the patient's right).

    Args:
        size: output side in pixels.
        strength: scales every range above (0 = identity, 1 = as listed).
    """

    def __init__(self, size: int, strength: float = 1.0) -> None:
        super().__init__()
        import kornia.augmentation as K

        s = float(strength)
        self.size = int(size)
        self.window_jitter = s
        self.steps = nn.Sequential(
            K.RandomAffine(degrees=10.0 * s, translate=(0.1 * s, 0.1 * s), scale=(1 - 0.25 * s, 1 + 0.3 * s), p=0.9),
            K.RandomGamma((1 - 0.3 * s, 1 + 0.4 * s), p=0.5),
            K.RandomGaussianBlur(blur_kernel(size), (0.1, 1.5), p=0.3),
            K.RandomSharpness(0.5 * s, p=0.3),
            K.RandomGaussianNoise(std=0.05 * s, p=0.5),
            K.RandomErasing(scale=(0.02, 0.08), ratio=(0.5, 2.0), p=0.25),
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.steps(images).clamp_(0.0, 1.0)


def jitter_ranges(ranges: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Per item and channel, a window shifted by ±10 % and widened/narrowed by ×0.85–1.2 (global RNG)."""
    if strength <= 0:
        return ranges
    lo, hi = ranges[..., 0], ranges[..., 1]
    width = hi - lo
    shift = (torch.rand(lo.shape) * 2 - 1) * 0.1 * strength * width
    scale = 1 + (torch.rand(lo.shape) * 0.35 - 0.15) * strength
    new_lo = lo + shift
    return torch.stack([new_lo, new_lo + width * scale], dim=-1)


def make_views(hu: torch.Tensor, views, augment: nn.Module | None, inverted: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Windowed, independently augmented views of one batch.

    Args:
        hu: B×1×S×S tensor in modality units (the cached geometry), or one such tensor per view
            (neighbour-slice positives: the second view is another slice).
        views: per view, a B×C×2 tensor of per-item (lo, hi) (:meth:`HUDataset.ranges`), or
            (legacy) a tuple of fixed windows.
        augment: a :class:`BatchAugment` or :class:`ArchiveAugment` (None = windows only); an
            augment with ``window_jitter > 0`` also jitters each item's window first.
        inverted: B bools (MONOCHROME1), or one such tensor per view.
    """
    images = hu if isinstance(hu, (list, tuple)) else [hu] * len(views)
    flips = inverted if isinstance(inverted, (list, tuple)) else [inverted] * len(views)
    jitter = getattr(augment, "window_jitter", 0.0) if augment is not None else 0.0
    windowed = [
        window_batch(x, jitter_ranges(v, jitter) if jitter else v, inv) if isinstance(v, torch.Tensor) else window_views(x, [v])[0]
        for x, v, inv in zip(images, views, flips)
    ]
    return [augment(v) if augment is not None else v for v in windowed]
