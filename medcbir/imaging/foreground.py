"""Foreground: where the body (or object) is in an image, so the field of view stops mattering.

Two scans of the same anatomy differ in field of view, in where the patient lies in it, in the
table and in padding. None of that is anatomy, yet a resize of the whole image carries all of it
into the encoder. :func:`foreground_box` finds the body as the largest connected component above
a threshold (CT: about −500 HU, above air and lung; other modalities: a level relative to the
item's normalisation window), and :func:`crop_window` turns that box into the square region that
becomes the model input, either just around the box or at a fixed physical scale centred on it.

Example:
    >>> box = foreground_box(hu, threshold=-500.0)           # doctest: +SKIP
    >>> region = crop_window(hu.shape, box, size=224, margin=0.05)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: CT: body = above this many HU (air −1000, lung −850…−500, fat −100, table > −500 but apart).
CT_BODY_HU = -500.0
#: Other modalities: body = above this fraction of the item's normalisation window.
BODY_LEVEL = 0.1
#: The mask is computed on an image no larger than this (connected components are cheap there).
MASK_SIDE = 128


@dataclass(frozen=True)
class Box:
    """A box in pixel coordinates of the full image: rows [top, bottom), cols [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def centre(self) -> tuple[float, float]:
        return (self.top + self.bottom) / 2.0, (self.left + self.right) / 2.0


def foreground_box(pixels: np.ndarray, threshold: float, *, inverted: bool = False) -> Box | None:
    """The bounding box of the largest connected foreground component, or None if there is none.

    Args:
        pixels: H×W image in modality units.
        threshold: foreground is ``pixels > threshold`` (``<`` when ``inverted``: MONOCHROME1,
            where the body is dark in stored values).
        inverted: the image is MONOCHROME1.
    """
    from scipy import ndimage

    arr = np.asarray(pixels, dtype=np.float32)
    h, w = arr.shape
    step = max(1, math.ceil(max(h, w) / MASK_SIDE))
    small = arr[::step, ::step]
    mask = small < threshold if inverted else small > threshold
    if mask.sum() < max(4, mask.size // 400):
        return None
    # An opening cuts thin bridges (a table touching the back, a cable, a noise speckle).
    opened = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    if opened.any():
        mask = opened
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return Box(
        top=int(rows.min()) * step,
        left=int(cols.min()) * step,
        bottom=min(h, (int(rows.max()) + 1) * step),
        right=min(w, (int(cols.max()) + 1) * step),
    )


@dataclass(frozen=True)
class Region:
    """The part of an image (possibly reaching outside it) that becomes the model input.

    ``top``/``left`` may be negative and ``height``/``width`` may exceed the image: what lies
    outside is padding.
    """

    top: int
    left: int
    height: int
    width: int


def crop_window(
    shape: tuple[int, int],
    box: Box | None,
    *,
    margin: float = 0.05,
    spacing: float | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    size: int = 224,
) -> Region:
    """The square (in millimetres when the scale is known) region to resize to the input.

    Args:
        shape: (H, W) of the image.
        box: the foreground box (None: the whole image).
        margin: added around the box on each side, as a fraction of its larger side.
        spacing: output mm per pixel; the region then spans ``size × spacing`` mm centred on
            the box (grown to hold the box when the body is larger than that). None: the
            region is the box with its margin, so the body fills the input whatever its size.
        pixel_spacing: (row, column) mm per pixel of the image (needed for ``spacing``; NaN or
            None falls back to the box).
        size: the input side in pixels.
    """
    h, w = shape
    if box is None:
        box = Box(0, 0, h, w)
    cy, cx = box.centre
    pad = margin * max(box.height, box.width)
    need_h, need_w = box.height + 2 * pad, box.width + 2 * pad
    known = pixel_spacing is not None and all(math.isfinite(v) and v > 0 for v in pixel_spacing)
    if spacing is not None and known:
        row_mm, col_mm = pixel_spacing
        # Square in millimetres: as many mm down as across.
        fov = max(size * spacing, need_h * row_mm, need_w * col_mm)
        rh, rw = fov / row_mm, fov / col_mm
    else:
        side = max(need_h, need_w, 1.0)
        rh = rw = side
    rh, rw = max(1, round(rh)), max(1, round(rw))
    return Region(top=round(cy - rh / 2.0), left=round(cx - rw / 2.0), height=rh, width=rw)


def extract(pixels: np.ndarray, region: Region, size: int, fill: float) -> np.ndarray:
    """Resize ``region`` of ``pixels`` (padding outside the image with ``fill``) to size×size."""
    from PIL import Image

    arr = np.asarray(pixels, dtype=np.float32)
    h, w = arr.shape
    out = np.full((region.height, region.width), fill, dtype=np.float32)
    r0, c0 = max(0, region.top), max(0, region.left)
    r1, c1 = min(h, region.top + region.height), min(w, region.left + region.width)
    if r1 > r0 and c1 > c0:
        out[r0 - region.top : r1 - region.top, c0 - region.left : c1 - region.left] = arr[r0:r1, c0:c1]
    if out.shape != (size, size):
        out = np.asarray(Image.fromarray(out, mode="F").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.ascontiguousarray(out)
