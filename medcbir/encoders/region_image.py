"""An image prepared for region work: on a physical grid, in comparable units, with its body mask.

Region proposals and region descriptors (:mod:`medcbir.encoders.region_proposals`,
:mod:`medcbir.encoders.region_descriptor`) work in millimetres and in intensity units where a
threshold means the same thing on every image:

- **Grid.** The frame is resampled to square pixels of :data:`GRID_MM` mm from its PixelSpacing
  (a coarser frame keeps its own pixel size), so everything downstream is measured in millimetres
  whatever the field of view or matrix (a frame without spacing is taken at 1 px = 1 mm). Very large
  frames get a coarser grid (at most :data:`MAX_GRID` pixels a side).
- **Units.** CT stays in Hounsfield units. Any other modality gets *pseudo-units*: the body's
  median maps to 0 and its robust intensity range (1st–99th percentile of the body) to
  :data:`PSEUDO_SPAN` units, so "20 units brighter than the surroundings" is a fixed fraction of
  the image's own contrast range. MONOCHROME1 is flipped so bright means dense everywhere.
- **Noise.** The standard deviation of pixel noise on the grid (robust: the median absolute
  deviation of each pixel from its four neighbours' mean, inside the body): descriptors subtract it from measured spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medcbir.imaging.foreground import CT_BODY_HU
from medcbir.imaging.items import Item

#: mm per pixel of the grid regions are found and described on.
GRID_MM = 1.0
#: Largest grid side in pixels (a larger frame is put on a coarser grid).
MAX_GRID = 512
#: Effective resolution (Gaussian sigma, mm) every frame is brought to before regions are found and described.
RESOLUTION_MM = 1.6
#: The blur (sigma) a pixel of side s carries, as a fraction of s.
PIXEL_BLUR = 0.4
#: Pseudo-units spanned by a non-CT image's robust body range.
PSEUDO_SPAN = 1000.0
#: Pseudo-unit level under which a non-CT pixel is background (the body median is 0).
PSEUDO_BODY = -0.4 * PSEUDO_SPAN


class DegenerateFrame(ValueError):
    """A frame with no second dimension to look for structures in (one row or column, or not 2-D)."""


@dataclass(frozen=True)
class RegionImage:
    """A frame on the region grid.

    Attributes:
        units: float32 G_h×G_w in Hounsfield units (CT) or pseudo-units.
        body: bool G_h×G_w, the largest foreground component with holes filled.
        mm: mm per grid pixel (the same on both axes).
        scale: (rows, cols) grid pixels per stored pixel: stored ``(x, y)`` → grid ``(x*scale[1], y*scale[0])``.
        noise: pixel noise standard deviation in units on the grid.
        hounsfield: True when ``units`` are Hounsfield units.
        shape: (rows, cols) of the stored frame.
    """

    units: np.ndarray
    body: np.ndarray
    mm: float
    scale: tuple[float, float]
    noise: float
    hounsfield: bool
    shape: tuple[int, int]

    def to_grid(self, box) -> tuple[float, float, float, float]:
        """A stored-grid box ``(x, y, w, h)`` → the same box on the region grid (floats)."""
        x, y, w, h = (float(v) for v in box)
        return x * self.scale[1], y * self.scale[0], w * self.scale[1], h * self.scale[0]

    def to_stored(self, box) -> tuple[int, int, int, int]:
        """A region-grid box ``(x, y, w, h)`` → integer stored-grid box, clipped to the frame."""
        return tuple(int(v) for v in self.boxes_to_stored(np.asarray([box], dtype=np.float64))[0])

    def boxes_to_stored(self, boxes) -> np.ndarray:
        """Region-grid boxes (N, ≥4) → integer stored-grid boxes, clipped to the frame: int32 (N, 4)."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1] if np.ndim(boxes) > 1 else 4)[:, :4]
        rows, cols = self.shape
        x0 = np.clip(np.floor(b[:, 0] / self.scale[1]), 0, cols - 1)
        y0 = np.clip(np.floor(b[:, 1] / self.scale[0]), 0, rows - 1)
        x1 = np.clip(np.ceil((b[:, 0] + b[:, 2]) / self.scale[1]), x0 + 1, cols)
        y1 = np.clip(np.ceil((b[:, 1] + b[:, 3]) / self.scale[0]), y0 + 1, rows)
        return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.int32)


def _spacing(item: Item) -> tuple[float, float]:
    sy, sx = (float(v) for v in item.meta.pixel_spacing)
    if not (math.isfinite(sy) and math.isfinite(sx) and sy > 0 and sx > 0):
        return 1.0, 1.0
    return sy, sx


def region_image(item: Item) -> RegionImage:
    """Put ``item`` (modality units) on the region grid (see the module docstring)."""
    pixels = np.asarray(item.pixels, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise DegenerateFrame(f"a region image needs a 2-D frame, not shape {pixels.shape}")
    pixels = np.nan_to_num(pixels, nan=float(np.nanmin(pixels)) if np.isfinite(pixels).any() else 0.0)
    rows, cols = pixels.shape
    sy, sx = _spacing(item)
    # Never finer than GRID_MM nor than the stored pixels (upsampling adds no detail, only cost),
    # and at most MAX_GRID pixels a side.
    mm = max(GRID_MM, min(sy, sx), rows * sy / MAX_GRID, cols * sx / MAX_GRID)
    scale = (sy / mm, sx / mm)
    grid = ndimage.zoom(pixels, scale, order=1, prefilter=False, grid_mode=True, mode="nearest")
    # One effective resolution for every frame: blur each to RESOLUTION_MM (Gaussian sigma),
    # counting the blur its own pixels already carry, so a coarser field of view does not look
    # smoother than a finer one.
    own = PIXEL_BLUR * max(sy, sx)
    extra = math.sqrt(max(RESOLUTION_MM ** 2 - own ** 2, 0.0)) / mm
    if extra > 0.1:
        grid = ndimage.gaussian_filter(grid, extra, mode="nearest")
    hounsfield = (item.meta.modality or "").upper() == "CT"
    if hounsfield:
        units = grid
        body = grid > CT_BODY_HU
    else:
        units = -grid if item.inverted else grid
        units = _pseudo_units(units)
        body = units > PSEUDO_BODY
    body = _largest_component(body)
    noise = _noise(units, body)
    return RegionImage(units=units.astype(np.float32, copy=False), body=body, mm=float(mm),
                       scale=(float(grid.shape[0] / rows), float(grid.shape[1] / cols)),
                       noise=noise, hounsfield=hounsfield, shape=(rows, cols))


def _pseudo_units(values: np.ndarray) -> np.ndarray:
    """Body median → 0, robust body range → :data:`PSEUDO_SPAN` units."""
    flat = values.ravel()
    lo_all, hi_all = np.percentile(flat, [1.0, 99.0])
    rough = flat[flat > lo_all + 0.1 * (hi_all - lo_all)]  # the body, roughly: above the background
    if rough.size < 16:
        rough = flat
    lo, median, hi = np.percentile(rough, [1.0, 50.0, 99.0])
    span = float(hi - lo) if hi > lo else 1.0
    return ((values - float(median)) * (PSEUDO_SPAN / span)).astype(np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def _noise(units: np.ndarray, body: np.ndarray) -> float:
    padded = np.pad(units, 1, mode="edge")
    residual = units - 0.25 * (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:])
    inside = residual[ndimage.binary_erosion(body, iterations=2)] if body.sum() > 64 else residual.ravel()
    if inside.size < 16:
        return 0.0
    mad = float(np.median(np.abs(inside - np.median(inside))))
    return 1.4826 * mad / math.sqrt(1.25)  # a pixel minus its 4 neighbours' mean: 1.25 σ² for white noise
