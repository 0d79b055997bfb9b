"""Preprocessing: the fixed recipe that turns an item into model input; part of the model.

The recipe, in order (each step recorded in the encoder's fingerprint):

1. **Window policy per channel** (:class:`~medcbir.imaging.policy.WindowPolicy`): the window an
   item gets depends on its modality (CT: Hounsfield windows; other modalities: ``robust``
   normalisation). An item whose modality no channel policy covers is skipped with reason
   ``modality-mismatch``: a CT window is never applied to pixels that have no Hounsfield units.
2. **Geometry**: with ``crop="body"`` the region around the largest foreground component (plus
   a margin) is cut out, so field of view, position on the table, the table and padding stop
   deciding what is similar; with ``spacing`` (mm per pixel) that region is taken at a fixed
   physical scale (``size × spacing`` mm, centred on the body) from the file's PixelSpacing.
   Then the region is resized to ``size × size`` (aspect kept for the legacy whole-image path).
3. **Windowing** of each channel (ranges computed from the item's own pixels and VOI: the same
   numbers the trainer uses, see :class:`WindowContext`), then MONOCHROME1 inversion.

Padding is what is dark after windowing and inversion: the image minimum (MONOCHROME2) or its
maximum (MONOCHROME1).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

from medcbir.errors import ConfigError
from medcbir.imaging.foreground import BODY_LEVEL, CT_BODY_HU, crop_window, extract, foreground_box
from medcbir.imaging.items import Item, SkipFile
from medcbir.imaging.policy import WindowPolicy
from medcbir.imaging.windows import PERCENTILES, WINDOWS, foreground_range, voi_range

CROPS = ("none", "body")


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
class WindowContext:
    """What an item's dynamic windows depend on, as plain numbers (storable in a training cache).

    Attributes:
        modality: the item's modality.
        voi: (centre, width) from the file, or None.
        inverted: MONOCHROME1.
        percentile_range: 0.5/99.5 % percentiles of the item's pixels (``auto`` without VOI).
        robust_range: 1/99 % percentiles of its foreground (``robust`` without VOI).
    """

    modality: str
    voi: tuple[float, float] | None
    inverted: bool
    percentile_range: tuple[float, float]
    robust_range: tuple[float, float]

    @classmethod
    def of(cls, item: Item) -> "WindowContext":
        arr = np.asarray(item.pixels, dtype=np.float32)
        sample = arr.ravel()[:: max(1, arr.size // 262144)] if arr.size > 262144 else arr
        lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
        if not hi > lo:
            hi = lo + 1.0
        return cls(
            modality=str(item.meta.modality or ""),
            voi=tuple(float(v) for v in item.voi) if item.voi is not None else None,
            inverted=bool(item.inverted),
            percentile_range=(lo, hi),
            robust_range=foreground_range(arr, inverted=bool(item.inverted)),
        )

    def range(self, window) -> tuple[float, float]:
        """(lo, hi) in modality units of a resolved window (name or pair) for this item."""
        if not isinstance(window, str):
            lo, hi = window
            return float(lo), float(hi)
        if window in WINDOWS:
            return WINDOWS[window]
        if self.voi is not None:
            return voi_range(*self.voi)
        return self.robust_range if window == "robust" else self.percentile_range


@dataclass(frozen=True)
class Preprocessing:
    """Window policies, geometry and size an encoder was trained with.

    Args:
        windows: one window policy per input channel: ``"CT=ct-liver-wide,*=robust"``, or a
            bare window (``"ct-liver-wide"`` = CT only; ``"auto"``, ``"voi"``, ``"robust"`` or
            a (lo, hi) pair = every modality), see :mod:`medcbir.imaging.policy`.
        size: the square input side in pixels.
        crop: ``"none"`` (the whole image, aspect kept) or ``"body"`` (the largest foreground
            component with a margin).
        spacing: mm per output pixel for a fixed physical scale (needs ``crop="body"``; items
            without PixelSpacing fall back to the body box); None = no fixed scale.
        margin: around the body box, as a fraction of its larger side.

    Example:
        >>> prep = Preprocessing(windows=("CT=ct-liver-wide,*=robust",), size=128, crop="body")
        >>> prep.apply(item).shape
        (1, 128, 128)
    """

    windows: tuple = ("ct-liver-wide",)
    size: int = 224
    crop: str = "none"
    spacing: float | None = None
    margin: float = 0.05
    policies: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        windows = self.windows
        if isinstance(windows, (str, WindowPolicy)):
            windows = (windows,)
        windows = tuple(w if isinstance(w, (str, WindowPolicy)) else tuple(float(v) for v in w) for w in windows)
        if not windows:
            raise ConfigError("preprocessing needs at least one window")
        policies = tuple(WindowPolicy.parse(w) for w in windows)
        records = (p.record() for p in policies)
        object.__setattr__(self, "windows", tuple(tuple(r) if isinstance(r, list) else r for r in records))
        object.__setattr__(self, "policies", policies)
        try:
            size = operator.index(self.size)  # ints and numpy integers, not floats or bools
        except TypeError:
            size = None
        if size is None or isinstance(self.size, bool) or size < 8:
            raise ConfigError(f"preprocessing size must be an int ≥ 8, got {self.size!r}")
        object.__setattr__(self, "size", int(size))
        if self.crop not in CROPS:
            raise ConfigError(f"crop must be one of {', '.join(CROPS)}, not {self.crop!r}")
        if self.spacing is not None:
            spacing = float(self.spacing)
            if not (math.isfinite(spacing) and spacing > 0):
                raise ConfigError(f"spacing must be a positive number of mm per pixel, not {self.spacing!r}")
            if self.crop != "body":
                raise ConfigError("a fixed physical scale (spacing) needs crop='body' (the region is centred on the body)")
            object.__setattr__(self, "spacing", spacing)
        margin = float(self.margin)
        if not 0.0 <= margin <= 1.0:
            raise ConfigError(f"margin must be in [0, 1], not {self.margin!r}")
        object.__setattr__(self, "margin", margin)

    @property
    def channels(self) -> int:
        return len(self.windows)

    @property
    def modalities(self) -> tuple[str, ...] | None:
        """Modalities every channel covers (None: every modality)."""
        if all(p.covers_all for p in self.policies):
            return None
        common = None
        for p in self.policies:
            if p.covers_all:
                continue
            mods = set(p.modalities)
            common = mods if common is None else common & mods
        return tuple(sorted(common or ()))

    def to_dict(self) -> dict:
        """The record kept in checkpoints; a legacy recipe keeps its legacy record (same fingerprint)."""
        record = {"windows": [p.record() for p in self.policies], "size": self.size}
        if self.crop != "none":
            record["crop"] = self.crop
            record["margin"] = self.margin
        if self.spacing is not None:
            record["spacing"] = self.spacing
        return record

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        try:
            return cls(
                windows=tuple(w if isinstance(w, str) else tuple(w) for w in data["windows"]),
                size=int(data["size"]),
                crop=str(data.get("crop", "none")),
                spacing=data.get("spacing"),
                margin=float(data.get("margin", 0.05)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad preprocessing record {data!r}") from exc

    def describe(self) -> str:
        """``"CT=ct-liver-wide,*=robust, 224 px, body crop"``: for messages and reports."""
        parts = ["+".join(str(p) for p in self.policies), f"{self.size} px"]
        if self.crop != "none":
            parts.append("body crop" + (f" at {self.spacing:g} mm/px" if self.spacing else ""))
        return ", ".join(parts)

    # ------------------------------------------------------------------ the recipe
    def channel_windows(self, item: Item) -> list:
        """The resolved window of each channel for this item.

        Raises:
            SkipFile: ``modality-mismatch`` when a channel's policy does not cover the modality.
        """
        modality = item.meta.modality or ""
        windows = []
        for policy in self.policies:
            window = policy.window_for(modality)
            if window is None:
                raise SkipFile("modality-mismatch", f"{modality or 'no modality'}: the encoder's window policy {policy} does not cover it")
            windows.append(window)
        return windows

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """size×size float32 in modality units of a bare image (whole image, aspect kept)."""
        return resize_keep_aspect(pixels, self.size)

    def region(self, item: Item, context: WindowContext | None = None):
        """The :class:`~medcbir.imaging.foreground.Region` of ``item`` that becomes the input (``crop="body"``).

        Also what any per-pixel companion of the image (an organ mask) must be cut with.
        """
        arr = np.asarray(item.pixels, dtype=np.float32)
        context = context or WindowContext.of(item)
        if (item.meta.modality or "").upper() == "CT":
            threshold = CT_BODY_HU
        else:
            lo, hi = context.range("robust")
            threshold = (hi - BODY_LEVEL * (hi - lo)) if item.inverted else (lo + BODY_LEVEL * (hi - lo))
        box = foreground_box(arr, threshold, inverted=item.inverted)
        return crop_window(arr.shape, box, margin=self.margin, spacing=self.spacing, pixel_spacing=item.meta.pixel_spacing, size=self.size)

    def geometry(self, item: Item, context: WindowContext | None = None) -> np.ndarray:
        """size×size float32 in modality units: the cropped/rescaled (or whole) image of the item."""
        arr = np.asarray(item.pixels, dtype=np.float32)
        fill = (float(arr.max()) if item.inverted else float(arr.min())) if arr.size else 0.0
        if self.crop == "none":
            return resize_keep_aspect(arr, self.size, fill=fill)
        return extract(arr, self.region(item, context), self.size, fill)

    def apply(self, item: Item) -> np.ndarray:
        """C×size×size float32 in [0, 1]: each channel's window of the geometry, MONOCHROME1 inverted.

        Raises:
            SkipFile: ``modality-mismatch`` (see :meth:`channel_windows`).
        """
        windows = self.channel_windows(item)
        context = WindowContext.of(item)
        image = self.geometry(item, context)
        return window_channels(image, [context.range(w) for w in windows], item.inverted)


def window_channels(image: np.ndarray, ranges, inverted: bool) -> np.ndarray:
    """C×S×S in [0, 1] from one S×S image in modality units and a (lo, hi) per channel."""
    out = np.empty((len(ranges), *image.shape), dtype=np.float32)
    for c, (lo, hi) in enumerate(ranges):
        np.subtract(image, np.float32(lo), out=out[c])
        np.multiply(out[c], np.float32(1.0 / (hi - lo)), out=out[c])
    np.clip(out, 0.0, 1.0, out=out)
    if inverted:
        np.subtract(1.0, out, out=out)
    return out
