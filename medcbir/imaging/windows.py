"""Display windows: a Hounsfield (or modality-unit) range mapped linearly onto [0, 1].

Named windows are the ones radiologists use, as (lo, hi) = (level - width/2, level + width/2).
``"voi"`` is the window stored in the file (WindowCenter/Width or a VOI LUT, DICOM PS3.3
C.11.2.1.2 linear function); ``"auto"`` is that window when the file has one, else the
0.5/99.5 percentiles of the image (useful for MR/CR/DX whose units are arbitrary).
``"robust"`` is the normalisation for modalities without Hounsfield units: the file's VOI when
present, else the 1/99 percentiles of the *foreground* (pixels clearly above the background),
so a large black background or a few hot pixels do not decide the scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medcbir.errors import ConfigError

if TYPE_CHECKING:
    from medcbir.imaging.items import Item

WINDOWS: dict[str, tuple[float, float]] = {
    "ct-liver-wide": (-200.0, 300.0),
    "ct-liver-narrow": (50.0, 150.0),
    "ct-abdomen": (-160.0, 240.0),  # L40 W400
    "ct-mediastinum": (-125.0, 225.0),  # L50 W350
    "ct-lung": (-1350.0, 150.0),  # L-600 W1500
    "ct-bone": (-500.0, 1300.0),  # L400 W1800
    "ct-brain": (0.0, 80.0),  # L40 W80
}
#: Windows computed per image rather than fixed.
DYNAMIC_WINDOWS = ("auto", "voi", "robust")
PERCENTILES = (0.5, 99.5)
#: ``robust``: percentiles of the foreground, which is everything above this fraction of the
#: image's own 0.5…99.5 % range (MR/CR background is noise near the bottom of that range).
FOREGROUND_PERCENTILES = (1.0, 99.0)
FOREGROUND_LEVEL = 0.1


def voi_range(centre: float, width: float) -> tuple[float, float]:
    """(lo, hi) of the DICOM linear VOI function for a WindowCenter/WindowWidth pair."""
    width = max(float(width), 1.0)
    lo = float(centre) - 0.5 - (width - 1.0) / 2.0
    return lo, lo + (width - 1.0)


def check_window(window: str | tuple[float, float]) -> None:
    """Raise :class:`ConfigError` unless ``window`` is a known name or a (lo, hi) pair with lo < hi."""
    if isinstance(window, str):
        if window not in WINDOWS and window not in DYNAMIC_WINDOWS:
            known = ", ".join([*WINDOWS, *DYNAMIC_WINDOWS])
            raise ConfigError(f"unknown window {window!r} (known: {known})")
        return
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"a window is a name or a (lo, hi) pair, not {window!r}") from None
    if not lo < hi:
        raise ConfigError(f"window {window!r}: lo must be < hi")


def window_range(window: str | tuple[float, float], pixels: Any = None, item: "Item | None" = None) -> tuple[float, float]:
    """Resolve a window to (lo, hi) in modality units.

    Args:
        window: a name from :data:`WINDOWS`, ``"auto"``, ``"voi"`` or a (lo, hi) pair.
        pixels: the image, used for the percentile fallback of ``auto``/``voi``.
        item: the :class:`Item`; its ``voi`` (and its original pixels for the percentiles,
            so padding added by a resize does not shift them) are used when given.
    """
    check_window(window)
    if not isinstance(window, str):
        lo, hi = window
        return float(lo), float(hi)
    if window in WINDOWS:
        return WINDOWS[window]
    if item is not None and item.voi is not None:
        return voi_range(*item.voi)
    reference = item.pixels if item is not None else pixels
    if reference is None:
        raise ConfigError(f"window {window!r} needs the image or its item")
    arr = reference.detach().float().cpu().numpy() if hasattr(reference, "detach") else np.asarray(reference)
    arr = arr.astype(np.float32, copy=False)
    if window == "robust":
        return foreground_range(arr, inverted=bool(item.inverted) if item is not None else False)
    lo, hi = np.percentile(arr, PERCENTILES)
    if not hi > lo:  # a flat image: any window maps it to one value; keep it well-defined
        hi = lo + 1.0
    return float(lo), float(hi)


def foreground_range(pixels: np.ndarray, inverted: bool = False) -> tuple[float, float]:
    """(lo, hi) = the 1/99 percentiles of the foreground of an image in arbitrary units.

    The foreground is every pixel above ``FOREGROUND_LEVEL`` of the way from the image's 0.5 %
    to its 99.5 % percentile (below, from the top, for MONOCHROME1, whose background is bright
    in stored values); when that leaves fewer than 1 % of the pixels, the whole image is used.
    Independent of any affine change of the intensity scale (a·x + b, a > 0).
    """
    arr = np.asarray(pixels, dtype=np.float32).ravel()
    if arr.size > 65536:  # percentiles of a regular subsample: same to well under 1 % of the range
        arr = arr[:: arr.size // 65536]
    lo_all, hi_all = np.percentile(arr, PERCENTILES)
    if not hi_all > lo_all:
        fg = arr
    elif inverted:
        fg = arr[arr < hi_all - FOREGROUND_LEVEL * (hi_all - lo_all)]
    else:
        fg = arr[arr > lo_all + FOREGROUND_LEVEL * (hi_all - lo_all)]
    if fg.size < max(16, arr.size // 100):
        fg = arr
    lo, hi = np.percentile(fg, FOREGROUND_PERCENTILES)
    if not hi > lo:
        lo, hi = float(lo_all), float(hi_all)
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def apply_window(pixels, window: str | tuple[float, float], item: "Item | None" = None):
    """Map modality units to [0, 1] through a window: below lo → 0, above hi → 1, linear between.

    Works on numpy arrays and torch tensors of any shape (same type and device out; float32).
    MONOCHROME1 inversion is *not* applied here (see :meth:`Preprocessing.apply`).

    Args:
        pixels: image(s) in modality units.
        window: a name from :data:`WINDOWS`, ``"auto"``, ``"voi"`` or a (lo, hi) pair.
        item: the item the pixels come from (for ``auto``/``voi``).

    Example:
        >>> apply_window(np.array([-1000.0, 50.0, 2000.0]), "ct-liver-wide")
        array([0. , 0.5, 1. ], dtype=float32)
    """
    lo, hi = window_range(window, pixels, item)
    scale = 1.0 / (hi - lo)
    if hasattr(pixels, "detach"):  # torch, without importing it here
        return ((pixels.float() - lo) * scale).clamp_(0.0, 1.0)
    out = (np.asarray(pixels, dtype=np.float32) - np.float32(lo)) * np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)
