"""Render axial slices: paint the anatomy's layers in HU, blur by the scanner's PSF, add noise.

Everything is vectorised numpy on the pixel grid; each outline is rasterised only inside its
bounding box, so a 256 × 256 slice with ~40 strokes costs a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medcbir.imaging.phantom.anatomy import ORGANS, Blob, Patient

AIR_HU = -1000.0
ORGAN_IDS = {name: i + 1 for i, name in enumerate(ORGANS)}  # owner-map values; 0 = none


@lru_cache(maxsize=8)
def _axis(size: int) -> np.ndarray:
    """Pixel-centre coordinates in [-1, 1] along one image axis (shared, read-only)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0)
    axis.setflags(write=False)
    return axis


def _window(blob: Blob, size: int) -> tuple[slice, slice] | None:
    """Rows/columns of the bounding box of ``blob`` on the pixel grid (None when off-image)."""
    reach = blob.reach
    lo_c = max(int(math.floor((blob.cx - reach + 1.0) / 2.0 * size)), 0)
    hi_c = min(int(math.ceil((blob.cx + reach + 1.0) / 2.0 * size)) + 1, size)
    lo_r = max(int(math.floor((blob.cy - reach + 1.0) / 2.0 * size)), 0)
    hi_r = min(int(math.ceil((blob.cy + reach + 1.0) / 2.0 * size)) + 1, size)
    if lo_c >= hi_c or lo_r >= hi_r:
        return None
    return slice(lo_r, hi_r), slice(lo_c, hi_c)


def _radius2(blob: Blob, size: int, window: tuple[slice, slice]) -> np.ndarray:
    """Squared elliptical radius over ``window``, divided by the squared outline radius there:
    a pixel centre is inside ``blob`` iff the value is < 1."""
    axis = _axis(size)
    rows, cols = window
    dx = axis[None, cols] - blob.cx
    dy = axis[rows, None] - blob.cy
    cos, sin = math.cos(blob.angle), math.sin(blob.angle)
    u = (dx * cos + dy * sin) / blob.ax
    v = (dy * cos - dx * sin) / blob.ay
    rho2 = u * u + v * v
    if not blob.harmonics:
        return rho2
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k, amplitude, phase in blob.harmonics:
        radius += amplitude * np.cos(k * theta + phase)
    return rho2 / (radius * radius)


def _inside(blob: Blob, size: int, window: tuple[slice, slice]) -> np.ndarray:
    """Boolean mask, over ``window`` only, of the pixel centres inside ``blob``."""
    return _radius2(blob, size, window) < 1.0


class _Outlines:
    """Rasterises the outlines of one slice, reusing work between concentric scaled copies.

    The skin, the muscle wall and the cavity (or an organ and its inner part) are the same
    outline at different scales; the harmonic radius (an arctan2 and a few cosines per pixel)
    is computed once for the largest and thresholded at ``scale²`` for the others.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._reference: dict[tuple, tuple[tuple[slice, slice], np.ndarray, float]] = {}

    def inside(self, blob: Blob) -> tuple[tuple[slice, slice], np.ndarray] | None:
        window = _window(blob, self.size)
        if window is None:
            return None
        if not blob.harmonics:
            return window, _inside(blob, self.size, window)
        key = (blob.cx, blob.cy, blob.angle, blob.harmonics, blob.ax / blob.ay)
        reference = self._reference.get(key)
        if reference is None or blob.ax > reference[2]:
            q = _radius2(blob, self.size, window)
            self._reference[key] = (window, q, blob.ax)
            return window, q < 1.0
        (ref_rows, ref_cols), q, ref_ax = reference
        rows, cols = window
        # A smaller concentric copy lies inside the reference's box: clip to it to be safe.
        rows = slice(max(rows.start, ref_rows.start), min(rows.stop, ref_rows.stop))
        cols = slice(max(cols.start, ref_cols.start), min(cols.stop, ref_cols.stop))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return None
        sub = q[rows.start - ref_rows.start:rows.stop - ref_rows.start, cols.start - ref_cols.start:cols.stop - ref_cols.start]
        return (rows, cols), sub < (blob.ax / ref_ax) ** 2


def rasterize(blob: Blob, size: int) -> np.ndarray:
    """Boolean ``size × size`` mask of the pixels whose centres lie inside ``blob``."""
    mask = np.zeros((size, size), dtype=bool)
    window = _window(blob, size)
    if window is not None:
        mask[window] = _inside(blob, size, window)
    return mask


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian point-spread function (separable, truncated at 3σ, edges extended).

    Equivalent to ``scipy.ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3)``;
    written as a handful of shifted multiply-adds because for the small kernels of a CT PSF
    that is faster than scipy's general 1-D correlation.
    """
    radius = max(int(sigma * 3.0 + 0.5), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    rows, cols = image.shape
    padded = np.pad(image, radius, mode="edge")
    across = taps[0] * padded[:, 0:cols]
    for k in range(1, 2 * radius + 1):
        across += taps[k] * padded[:, k:k + cols]
    out = taps[0] * across[0:rows]
    for k in range(1, 2 * radius + 1):
        out += taps[k] * across[k:k + rows]
    return out


@dataclass
class RenderedSlice:
    """One rendered slice: HU image (float32, blurred and noisy) and boolean masks of the organs
    it shows (organs absent from the slice have no entry)."""

    hu: np.ndarray
    masks: dict[str, np.ndarray]


@dataclass(frozen=True)
class Pose:
    """Where the patient lies in the image (phantom v2): anatomy coordinates are scaled by
    ``scale``, rotated by ``angle`` (radians) and shifted by ``(dx, dy)`` (image units)."""

    scale: float = 1.0
    angle: float = 0.0
    dx: float = 0.0
    dy: float = 0.0

    def place(self, blob: Blob) -> Blob:
        c, s, k = math.cos(self.angle), math.sin(self.angle), self.scale
        return Blob(k * (c * blob.cx - s * blob.cy) + self.dx, k * (s * blob.cx + c * blob.cy) + self.dy,
                    k * blob.ax, k * blob.ay, blob.angle + self.angle, blob.harmonics)

    def place_table(self, blob: Blob) -> Blob:
        """The couch belongs to the scanner: it follows the field of view and the patient's
        height above it, not the patient's roll or sideways offset."""
        k = self.scale
        return Blob(k * blob.cx, k * blob.cy + self.dy, k * blob.ax, k * blob.ay, blob.angle, blob.harmonics)


IDENTITY = Pose()


@dataclass(frozen=True)
class Finish:
    """Image formation after painting (phantom v2): kernel, metal streaks, calibration offset.

    Attributes:
        sharpen: unsharp-mask gain of a sharp kernel (0 = soft kernel).
        metal: None, or (x, y, radius) of the metal in image units, its z range and streak
            strength in HU: ``(x, y, radius, z_top, z_bottom, strength)``.
        hu_offset: added to every pixel.
    """

    sharpen: float = 0.0
    metal: tuple | None = None
    hu_offset: float = 0.0


def _metal_streaks(size: int, x: float, y: float, strength: float, phase: float) -> np.ndarray:
    """Bright and dark streaks radiating from a metal object, fading with distance."""
    axis = _axis(size)
    dx = axis[None, :] - np.float32(x)
    dy = axis[:, None] - np.float32(y)
    angle = np.arctan2(dy, dx)
    radius = np.sqrt(dx * dx + dy * dy)
    pattern = np.sin(16.0 * angle + phase) * np.sin(7.0 * angle + 2.0 * phase)
    return (np.float32(strength) * pattern * (0.08 / (radius + 0.08))).astype(np.float32)


class SliceRenderer:
    """Renders the axial slices of one patient at one size.

    What does not change along the body axis (air and the scanner couch) is painted once, and
    every slice starts from a copy of that canvas.

    Args:
        patient: the anatomy.
        size: image rows = columns.
    """

    def __init__(self, patient: Patient, size: int, pose: Pose = IDENTITY, finish: Finish | None = None) -> None:
        self.patient = patient
        self.size = size
        self.pose = pose
        self.finish = finish
        self._canvas = np.full((size, size), AIR_HU, dtype=np.float32)
        outlines = _Outlines(size)
        for layer in patient.fixed_layers():
            found = outlines.inside(layer.blob if pose is IDENTITY else pose.place_table(layer.blob))
            if found is not None:
                np.copyto(self._canvas[found[0]], np.float32(layer.hu), where=found[1])
        self._canvas.setflags(write=False)

    def render(self, z: float, *, noise_hu: float, blur_px: float, rng: np.random.Generator) -> RenderedSlice:
        """Render the slice at body position ``z``.

        Args:
            z: position along the scanned range, 0 (top) … 1 (bottom).
            noise_hu: standard deviation of the added noise in HU.
            blur_px: Gaussian PSF standard deviation in pixels (0 = none).
            rng: the slice's own generator (noise), so slices are independent of render order.
        """
        patient, size = self.patient, self.size
        hu = self._canvas.copy()
        owner = np.zeros((size, size), dtype=np.uint8)  # 0 = air / unlabelled tissue
        outlines = _Outlines(size)
        place = (lambda blob: blob) if self.pose is IDENTITY else self.pose.place
        body = np.zeros((size, size), dtype=bool)
        cavity = np.zeros((size, size), dtype=bool)
        extra: dict[str, np.ndarray] = {}
        extra_within: dict[str, str | None] = {}
        for target, blob in ((body, patient.body_at(z)), (cavity, patient.cavity_at(z))):
            found = outlines.inside(place(blob))
            if found is not None:
                target[found[0]] = found[1]
        for layer in patient.layers(z):
            found = outlines.inside(place(layer.blob))
            if found is None:
                continue
            window, inside = found
            if layer.in_cavity:
                inside = inside & cavity[window]
            if layer.within is not None:
                inside = inside & (owner[window] == ORGAN_IDS[layer.within])
            # Painting only inside the bounding box keeps a stroke's cost proportional to its size.
            np.copyto(hu[window], np.float32(layer.hu), where=inside)
            if layer.organ is not None:
                np.copyto(owner[window], np.uint8(ORGAN_IDS.get(layer.organ, 0)), where=inside)
            if layer.mask is not None:
                extra.setdefault(layer.mask, np.zeros((size, size), dtype=bool))[window] |= inside
                extra_within[layer.mask] = layer.within
        finish = self.finish
        metal = finish.metal if finish is not None else None
        if metal is not None and metal[3] <= z < metal[4]:
            found = outlines.inside(Blob(metal[0], metal[1], metal[2], metal[2]))
            if found is not None:
                np.copyto(hu[found[0]], np.float32(3000.0), where=found[1])
        if blur_px > 0:
            soft = blur(hu, blur_px)
            if finish is not None and finish.sharpen > 0:
                # An edge-enhancing kernel: unsharp masking against a wider blur.
                soft += np.float32(finish.sharpen) * (soft - blur(soft, 2.0 * blur_px))
            hu = soft
        hu += rng.standard_normal((size, size), dtype=np.float32) * np.float32(noise_hu)
        if metal is not None and metal[3] <= z < metal[4]:
            hu += _metal_streaks(size, metal[0], metal[1], metal[5], float(rng.uniform(0, 2 * math.pi)))
        if finish is not None and finish.hu_offset:
            hu += np.float32(finish.hu_offset)
        present = np.flatnonzero(np.bincount(owner.ravel(), minlength=len(ORGANS) + 1))
        masks = {ORGANS[i - 1]: owner == i for i in present if i > 0}
        masks["body"] = body
        for name, painted in extra.items():
            # Later strokes (other organs) may have painted over a lesion: keep what its organ
            # still owns.
            within = extra_within[name]
            kept = painted if within is None else painted & (owner == ORGAN_IDS[within])
            if kept.any():
                masks[name] = kept
        return RenderedSlice(hu=hu, masks=masks)
