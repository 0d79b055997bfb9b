"""The region descriptor: what a structure looks like, as a short vector (``radiomic-v2``).

A box on the region grid (:mod:`medcbir.encoders.region_image`) is described by sampling the
image on a polar grid fitted to the box: :data:`RADII` radii from the centre out to
:data:`REACH` times the box's half-sides (so the structure *and* its surroundings) and
:data:`ANGLES` angles, bilinear. Everything is measured on those samples, so a 6 mm metastasis
and a 60 mm one give vectors on the same footing, and a rotated lesion the same vector. Each
sample counts by the area it stands for (its radius), so every part of the structure weighs
by its area, not by how close it lies to the box's centre:

- **Rings** (normalised radius 0–0.35 core, 0.35–0.7 middle, 0.7–1.0 edge, 1.0–1.35 near,
  1.35–1.7 far): the mean of each ring (absolute level: fluid, soft tissue, enhancement,
  calcium), each inner ring's contrast to the far ring (brighter or darker than its
  surroundings, rim-enhancing or homogeneous), and each ring's spread with the pixel noise
  taken out (texture, not noise).
- **Contrast bands**: the fraction of the inside (radius < 1) darker/brighter than the far ring by
  more than 100 or 30 units, or within 30.
- **Inside extremes**: 10th and 90th percentiles of the inside, relative to the far ring (dense
  foci in an otherwise plain lesion).
- **Rim harmonics**: the first and second angular harmonics of the edge ring (a rim that is
  complete or broken, a structure that is one-sided), relative to the ring's spread.
- **Size and shape**: log of the box's mean half-side in mm, log of its aspect ratio.

Units are divided by 100 (hundreds of Hounsfield units). The vector is not normalised here: region
search compares descriptors with their intensity coordinates compressed (:func:`comparable`) and
whitened with the index's own statistics (:class:`medcbir.indexer.region_index.RegionMetric`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medcbir.encoders.region_image import RegionImage

NAME = "radiomic-v2"
RADII = 12
ANGLES = 24
REACH = 1.7
RINGS = ((0.0, 0.35), (0.35, 0.7), (0.7, 1.0), (1.0, 1.35), (1.35, REACH + 1e-6))
BANDS = (-np.inf, -100.0, -30.0, 30.0, 100.0, np.inf)
UNIT = 100.0

_R = (np.arange(RADII) + 0.5) / RADII * REACH
_T = np.arange(ANGLES) * (2 * np.pi / ANGLES)
_RING = [(_R >= lo) & (_R < hi) for lo, hi in RINGS]
_INSIDE = _R < 1.0
_EDGE = (_R >= 0.7) & (_R < 1.06)
#: Each sample stands for the area around it: on a polar grid that area grows with the radius, so
#: every statistic weights a sample by its radius (the polar Jacobian). Without it, pixels near the
#: centre are read by many samples and those near the rim by few.
_W = _R / _R.mean()

#: Box variants a descriptor averages over: (scale, shift x, shift y), shifts as fractions of the side.
JITTER = tuple((scale, d, d) for scale in (0.8, 1.0, 1.25) for d in (0.0, 0.1, -0.1))
#: Length of a descriptor.
DIM = 5 + 4 + 5 + 5 + 2 + 2 + 2
#: The coordinates measured in intensity units (ring means, contrasts, spreads, inside extremes),
#: in :func:`_describe`'s order; the others are fractions, ratios and logs.
INTENSITY = np.r_[0:14, 19:21]
#: Intensity differences below about this many units count as they are; larger ones count by their
#: logarithm (:func:`comparable`). The size of the contrast bands' inner edge.
KNEE = 30.0


def comparable(descriptors: np.ndarray) -> np.ndarray:
    """float32 copy of ``descriptors`` (N, :data:`DIM`) with the intensity coordinates compressed,
    ``asinh(x / KNEE)``: linear within ±:data:`KNEE` units, logarithmic beyond.

    What region search compares (:class:`medcbir.indexer.region_index.RegionMetric`). On the
    linear scale a difference of 20 units between two soft-tissue structures (a lesion and a vessel
    in the liver) is lost among the hundreds of units that separate fat, soft tissue, calcium and
    air, which set the scale of those coordinates; compressed, 15 against 45 units counts nearly as
    much as 150 against 450.
    """
    x = np.array(descriptors, dtype=np.float32, copy=True, ndmin=2)
    x[:, INTENSITY] = np.arcsinh(x[:, INTENSITY] * (UNIT / KNEE))
    return x


def describe(image: RegionImage, boxes: np.ndarray) -> np.ndarray:
    """float32 (N, :data:`DIM`) descriptors of ``boxes`` (N, ≥4: x, y, w, h on the region grid).

    Each is the mean over :data:`JITTER` variants of its box (scaled and shifted by a fraction of
    its size): a box drawn a pixel wider or a field of view that rounds it differently describes
    the same structure, not a different cut through it.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1] if np.ndim(boxes) > 1 else 4)[:, :4]
    if not len(boxes):
        return np.zeros((0, DIM), dtype=np.float32)
    variants = []
    for scale, dx, dy in JITTER:
        w, h = boxes[:, 2] * scale, boxes[:, 3] * scale
        x = boxes[:, 0] + (boxes[:, 2] - w) / 2 + dx * boxes[:, 2]
        y = boxes[:, 1] + (boxes[:, 3] - h) / 2 + dy * boxes[:, 3]
        variants.append(np.stack([x, y, w, h], axis=1))
    described = _describe(image, np.concatenate(variants))  # one batch: (len(JITTER) · N, DIM)
    return described.reshape(len(JITTER), len(boxes), DIM).mean(axis=0).astype(np.float32)


def _describe(image: RegionImage, boxes: np.ndarray) -> np.ndarray:
    cx = boxes[:, 0] + boxes[:, 2] / 2
    cy = boxes[:, 1] + boxes[:, 3] / 2
    rx = np.maximum(boxes[:, 2] / 2, 0.5)
    ry = np.maximum(boxes[:, 3] / 2, 0.5)
    # (N, RADII, ANGLES) sample positions, pixel centres at integer + 0.5 on the grid
    xs = cx[:, None, None] + rx[:, None, None] * _R[None, :, None] * np.cos(_T)[None, None, :] - 0.5
    ys = cy[:, None, None] + ry[:, None, None] * _R[None, :, None] * np.sin(_T)[None, None, :] - 0.5
    samples = ndimage.map_coordinates(image.units, [ys.ravel(), xs.ravel()], order=1, mode="nearest").reshape(xs.shape)
    samples = samples / UNIT
    noise = image.noise / UNIT
    w = np.repeat(_W, ANGLES)  # per sample, radius-major like samples.reshape(N, -1)
    flat = samples.reshape(len(boxes), -1)
    rings = [np.repeat(ring, ANGLES) for ring in _RING]
    ring_w = [w[ring] / w[ring].sum() for ring in rings]  # weights of the ring's samples, summing to 1
    means = np.stack([flat[:, ring] @ rw for ring, rw in zip(rings, ring_w)], axis=1)
    far = means[:, -1]
    contrast = means[:, :4] - far[:, None]
    spread = np.stack([np.sqrt(np.maximum((flat[:, ring] - m[:, None]) ** 2 @ rw - noise ** 2, 0.0))
                       for ring, rw, m in zip(rings, ring_w, means.T)], axis=1)
    inside_mask = np.repeat(_INSIDE, ANGLES)
    inside = flat[:, inside_mask] - far[:, None]
    inside_w = w[inside_mask] / w[inside_mask].sum()
    edges = np.asarray(BANDS) / UNIT
    bands = np.stack([((inside >= lo) & (inside < hi)) @ inside_w for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    extremes = _weighted_percentiles(inside, inside_w, (0.1, 0.9))
    edge_w = _W[_EDGE] / _W[_EDGE].sum()
    rim = np.einsum("nra,r->na", samples[:, _EDGE], edge_w)  # (N, ANGLES): the edge ring's angular profile
    spectrum = np.abs(np.fft.rfft(rim - rim.mean(axis=1, keepdims=True), axis=1)) / ANGLES
    rim_spread = rim.std(axis=1) + noise + 1e-6
    harmonics = spectrum[:, 1:3] / rim_spread[:, None]
    half_mm = np.sqrt(rx * ry) * image.mm
    shape = np.stack([np.log(np.maximum(half_mm, 0.25)), np.log(np.maximum(rx, ry) / np.minimum(rx, ry))], axis=1)
    out = np.concatenate([means, contrast, spread, bands, extremes, harmonics, shape], axis=1)
    return out.astype(np.float32)


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs) -> np.ndarray:
    """(N, len(qs)) weighted quantiles of each row of ``values`` (N, M); ``weights`` (M,) sum to 1."""
    order = np.argsort(values, axis=1)
    ranked = np.take_along_axis(values, order, axis=1)
    cumulative = np.cumsum(weights[order], axis=1) - weights[order] / 2  # mid-point of each sample's mass
    out = np.empty((len(values), len(qs)), dtype=np.float64)
    for j, q in enumerate(qs):
        idx = np.clip((cumulative < q).sum(axis=1), 1, values.shape[1] - 1)
        lo, hi = np.take_along_axis(cumulative, idx[:, None] - 1, 1)[:, 0], np.take_along_axis(cumulative, idx[:, None], 1)[:, 0]
        vlo, vhi = np.take_along_axis(ranked, idx[:, None] - 1, 1)[:, 0], np.take_along_axis(ranked, idx[:, None], 1)[:, 0]
        t = np.clip((q - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        out[:, j] = vlo + t * (vhi - vlo)
    return out
