"""The preprocessing of new encoders, and reading a preprocessing record back.

An encoder is its network plus the preprocessing it was trained with (the window policy per
channel, the input size, the body crop and its physical scale: :class:`medcbir.imaging.Preprocessing`);
both are fingerprinted together. No torch here.

Example:
    >>> prep = default_preprocessing(size=128)
    >>> prep.size, prep.crop, prep.spacing
    (128, 'body', 1.75)
"""

from __future__ import annotations

from typing import Any

from medcbir.errors import ConfigError
from medcbir.imaging.preprocess import Preprocessing

#: New encoders: CT through the liver window, every other modality normalised (never a CT
#: window on MR), the body cropped out of its field of view (README: "Preprocessing").
DEFAULT_WINDOWS = ("CT=ct-liver-wide,*=robust",)
DEFAULT_SIZE = 224
DEFAULT_CROP = "body"
#: The body region spans this many mm (at any input size) when the body fits in it: a brain keeps
#: its real size across fields of view; a larger body is fitted to the input instead.
DEFAULT_FOV_MM = 224.0
#: The window of medcbir 0.1's default encoder (``default-v1``), on every modality.
LEGACY_WINDOWS = ("ct-liver-wide",)


def default_preprocessing(size: int = DEFAULT_SIZE, windows: Any = DEFAULT_WINDOWS, crop: str = DEFAULT_CROP, fov_mm: float | None = DEFAULT_FOV_MM) -> Preprocessing:
    """The preprocessing of new encoders: window policy by modality, body crop, fixed physical scale.

    Args:
        size: input side in pixels.
        windows: one window policy per channel.
        crop: ``"body"`` or ``"none"``.
        fov_mm: the body region's extent in mm (spacing = fov_mm / size); None = fit the body box.
    """
    spacing = float(fov_mm) / int(size) if (fov_mm and crop == "body") else None
    return Preprocessing(windows=tuple(windows), size=size, crop=crop, spacing=spacing)


def legacy_preprocessing() -> Preprocessing:
    """The preprocessing of ``default-v1``: the CT liver window on every modality, whole image."""
    return Preprocessing(windows=LEGACY_WINDOWS, size=DEFAULT_SIZE)


def as_preprocessing(value: Any) -> Preprocessing:
    """A :class:`~medcbir.imaging.Preprocessing` from itself, its dict record, or None (the default)."""
    if value is None:
        return default_preprocessing()
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict):
        return Preprocessing.from_dict(value)
    raise ConfigError(f"not a preprocessing record: {value!r}")
