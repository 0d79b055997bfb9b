"""Preprocessing: the fixed recipe that turns an item into model input; part of the model."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from medcbir.errors import ConfigError
from medcbir.imaging.items import Item
from medcbir.imaging.windows import apply_window, check_window


def resize_keep_aspect(pixels: np.ndarray, size: int, fill: float | None = None) -> np.ndarray:
    """Resize H×W to fit in size×size with the aspect kept, centred, padded with ``fill``.

    Bilinear with antialiasing when shrinking (Pillow's "F" mode keeps float32 values exact
    in range, unlike an 8-bit image).

    Args:
        pixels: H×W array (any real dtype).
        size: output side.
        fill: padding value; the image minimum by default (air for CT).
    """
    from PIL import Image

    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected an H×W image, got shape {arr.shape}")
    h, w = arr.shape
    if fill is None:
        fill = float(arr.min()) if arr.size else 0.0
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    if (nh, nw) != (h, w):
        arr = np.asarray(Image.fromarray(arr, mode="F").resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    if (nh, nw) == (size, size):
        return np.ascontiguousarray(arr)
    out = np.full((size, size), fill, dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = arr
    return out


@dataclass(frozen=True)
class Preprocessing:
    """Windows and size an encoder was trained with; resize first (HU), then window.

    Args:
        windows: one window per input channel (names of ``WINDOWS``, ``"auto"``, ``"voi"``
            or (lo, hi) pairs).
        size: the square input side in pixels.

    Example:
        >>> prep = Preprocessing(windows=("ct-liver-wide", "ct-lung"), size=128)
        >>> prep.apply(item).shape
        (2, 128, 128)
    """

    windows: tuple = ("ct-liver-wide",)
    size: int = 224

    def __post_init__(self) -> None:
        if isinstance(self.windows, str):
            object.__setattr__(self, "windows", (self.windows,))
        windows = tuple(tuple(float(v) for v in w) if not isinstance(w, str) else w for w in self.windows)
        object.__setattr__(self, "windows", windows)
        if not windows:
            raise ConfigError("preprocessing needs at least one window")
        for window in windows:
            check_window(window)
        try:
            size = operator.index(self.size)  # ints and numpy integers, not floats or bools
        except TypeError:
            size = None
        if size is None or isinstance(self.size, bool) or size < 8:
            raise ConfigError(f"preprocessing size must be an int ≥ 8, got {self.size!r}")
        object.__setattr__(self, "size", int(size))

    @property
    def channels(self) -> int:
        return len(self.windows)

    def to_dict(self) -> dict:
        return {"windows": [w if isinstance(w, str) else list(w) for w in self.windows], "size": self.size}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        try:
            return cls(windows=tuple(data["windows"]), size=int(data["size"]))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"bad preprocessing record {data!r}") from exc

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """size×size float32 in modality units (aspect kept, padded with the image minimum)."""
        return resize_keep_aspect(pixels, self.size)

    def apply(self, item: Item) -> np.ndarray:
        """C×size×size float32 in [0, 1]: each window of the resized image, MONOCHROME1 inverted."""
        resized = self.resize(item.pixels)
        out = np.empty((self.channels, self.size, self.size), dtype=np.float32)
        for c, window in enumerate(self.windows):
            out[c] = apply_window(resized, window, item)
        if item.inverted:
            np.subtract(1.0, out, out=out)
        return out
