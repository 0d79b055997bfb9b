"""Region proposals: boxes around every structure that stands out from its surroundings.

On the region grid (:mod:`medcbir.encoders.region_image`, 1 mm pixels, Hounsfield or
pseudo-units) a structure is *brighter* or *darker* than what surrounds it: a hypervascular
lesion or a calcification against liver, a cyst or a hypodense metastasis against it. Grey-level
morphology finds both at once and at every scale:

1. Outside the body is set to the body's median, so the air never makes the skin "stand out".
2. For each footprint in :data:`SCALES_MM`, the white top-hat (image − opening) keeps what is
   brighter than its surroundings and smaller than the footprint; the black top-hat (closing −
   image) what is darker.
3. Connected pixels of the residue above :data:`CONTRAST` units form a structure. Each gives its
   bounding box and, when it differs, the box of its *core* (residue ≥ :data:`CORE` × its peak):
   a ring-enhancing lesion's whole extent and its centre are both candidates. A structure larger
   than :data:`MAX_MM` is split: its pixels are thresholded again at :data:`SPLIT` times the level,
   and so on while some part is still too large (``proposals-v3``). Where tissue is cluttered (the
   folds of a brain, vessels touching each other) the residue above 20 units joins many
   structures into one network larger than any organ; without the split, a lesion 300 units
   brighter than the brain around it was dropped with that network. The parts found by splitting
   are ranked among themselves and kept up to :func:`split_limit` (half the structures' limit)
   beyond the structures, so they never push out a structure found at :data:`CONTRAST`.
4. Boxes whose longer side is outside :data:`MIN_MM`–:data:`MAX_MM` are dropped; the rest are
   ranked by integrated contrast (sum of residue), near-duplicates removed (IoU >
   :data:`NMS_IOU`) and at most :data:`LIMIT` kept.
5. **Organs** are neither brighter nor darker than everything around them (a liver touches fat,
   muscle, kidney, lung), and most are larger than the largest footprint, so the top-hats miss
   them. They come from zones of like tissue instead (:func:`_organs`): up to
   :data:`ORGAN_LIMIT` zones per image whose longer side is :data:`ORGAN_MM` mm, largest first,
   after the structures and beyond their limit (a whole-organ query needs an organ-sized region
   to match, and a lesion query should not lose one of its structures for it).

Everything is in mm and units, so a lesion gives the same proposals at any field of view, and
no position or orientation is preferred.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medcbir.encoders.region_image import RegionImage

#: Footprints (mm) of the top-hats: a structure shows at the first one larger than it.
SCALES_MM: tuple[int, ...] = (15, 41, 131)
#: Pixels a top-hat footprint spans on the grid it runs on.
FOOTPRINT_PX = 15
#: Minimum residue (units) for a pixel to belong to a structure.
CONTRAST = 20.0
#: A structure larger than :data:`MAX_MM` is looked into again at this many times its level.
SPLIT = 2.0
#: Boxes from split structures per image: at most this share of the structures' limit, beyond it.
SPLIT_SHARE = 0.5
#: A structure's core: residue at least this fraction of its peak.
CORE = 0.5
#: Kept structures: longer side in this range (mm).
MIN_MM, MAX_MM = 4.0, 130.0
#: Two boxes overlapping more than this are one (the higher scored is kept).
NMS_IOU = 0.7
#: At most this many boxes per image.
LIMIT = 64
#: Smoothing (mm) before the top-hats: pixel noise alone should not make structures.
SMOOTH_MM = 0.6
#: Organs (:func:`_organs`): smoothing (mm), grid (mm), edge slope (units per mm), neck (mm),
#: longer side (mm) and at most this many per image, the largest first, after the structures.
ORGAN_SMOOTH_MM = 2.0
ORGAN_GRID_MM = 3.0
ORGAN_EDGE = 1.5
#: ... or this many times the image's median slope in the body, if steeper (noisy images).
ORGAN_NOISE = 3.0
#: Width (units) of the levels of like value that also make organ zones.
ORGAN_LEVEL = 40.0
ORGAN_NECK_MM = 3.0
ORGAN_MM = (100.0, 400.0)
ORGAN_LIMIT = 8


def split_limit(limit: int) -> int:
    """Boxes from split structures an image keeps beyond ``limit`` structures (:data:`SPLIT_SHARE`)."""
    return int(limit * SPLIT_SHARE)


def most_regions(limit: int = LIMIT) -> int:
    """The most regions :func:`propose` gives an image with ``limit``: structures, parts of split
    structures and organ zones."""
    return int(limit) + split_limit(limit) + ORGAN_LIMIT


def propose(image: RegionImage, limit: int = LIMIT) -> np.ndarray:
    """Boxes of ``image``'s structures on its grid, best first (at most ``limit``), then parts of
    structures too large to be one (best first, at most :func:`split_limit`), then its organ zones,
    largest first (at most :data:`ORGAN_LIMIT`).

    Returns:
        float32 (N, 5): ``x, y, w, h`` on the region grid and the score (a structure's integrated
        contrast, an organ zone's area in mm²).
    """
    if not image.body.any():
        return np.zeros((0, 5), dtype=np.float32)
    units = ndimage.gaussian_filter(image.units, SMOOTH_MM / image.mm)
    level = float(np.median(units[image.body]))
    units = np.where(image.body, units, level).astype(np.float32)
    inside = ndimage.binary_erosion(image.body, iterations=max(1, round(2.0 / image.mm)))
    candidates = []
    for scale in SCALES_MM:
        # Each scale on a grid where its footprint is about FOOTPRINT_PX wide: a 131 mm top-hat
        # needs no 1 mm detail, and a coarse grid makes it cheap.
        step = max(1, int(scale / image.mm) // FOOTPRINT_PX)
        small = units if step == 1 else ndimage.zoom(units, 1.0 / step, order=1, grid_mode=True, mode="nearest")
        inner = inside if step == 1 else ndimage.zoom(inside.astype(np.float32), 1.0 / step, order=0, grid_mode=True, mode="nearest") > 0.5
        size = max(3, int(round(scale / (image.mm * step))) | 1)
        opened = ndimage.grey_opening(small, size=(size, size))
        closed = ndimage.grey_closing(small, size=(size, size))
        zoom = (units.shape[0] / small.shape[0], units.shape[1] / small.shape[1])
        for residue in (small - opened, closed - small):
            found = _structures(np.where(inner, residue, 0.0), image.mm * step)
            found[:, [0, 2]] *= zoom[1]
            found[:, [1, 3]] *= zoom[0]
            candidates.append(found)
    boxes = np.concatenate(candidates) if candidates else np.zeros((0, 6), dtype=np.float32)
    structures = _suppress(boxes[boxes[:, 5] == 0, :5], NMS_IOU, limit)
    # Parts of structures too large to be one (split): their own quota, so they do not push out
    # the structures found at CONTRAST, and none that is already one of those.
    parts = _suppress(boxes[boxes[:, 5] > 0, :5], NMS_IOU, len(boxes))
    if len(parts) and len(structures):
        parts = parts[~(box_iou(parts, structures) > NMS_IOU).any(axis=1)]
    structures = np.concatenate([structures, parts[:split_limit(limit)]])
    organs = _suppress(_organs(image), NMS_IOU, ORGAN_LIMIT)
    if len(organs) and len(structures):
        organs = organs[~(box_iou(organs, structures) > NMS_IOU).any(axis=1)]  # already there as a structure
    return np.concatenate([structures, organs])


def _organs(image: RegionImage) -> np.ndarray:
    """Boxes of zones of like tissue at organ scale (an organ is neither brighter nor darker than
    everything around it, so the top-hats miss it): on the image smoothed by
    :data:`ORGAN_SMOOTH_MM` and sampled every :data:`ORGAN_GRID_MM`, the pixels where it changes by
    less than :data:`ORGAN_EDGE` units per mm (two tissues a few tens of units apart are two zones
    whatever their values), and the levels of like value :data:`ORGAN_LEVEL` units wide (tissues
    whose boundary is too gentle for an edge); each cut apart where it narrows below
    :data:`ORGAN_NECK_MM`, with its holes (vessels, lesions) filled. Score: the zone's filled area
    in mm²."""
    step = max(1, int(round(ORGAN_GRID_MM / image.mm)))
    units = ndimage.gaussian_filter(image.units, ORGAN_SMOOTH_MM / image.mm)[::step, ::step]
    body = ndimage.binary_erosion(image.body[::step, ::step])
    mm = image.mm * step
    gy, gx = np.gradient(units, mm)
    slope = np.hypot(gx, gy)
    # Noise steepens a flat image too: an edge must stand above the image's typical slope.
    edge = max(ORGAN_EDGE, ORGAN_NOISE * float(np.median(slope[body]))) if body.any() else ORGAN_EDGE
    flat = (slope < edge) & body
    neck = max(1, int(round(ORGAN_NECK_MM / mm / 2)))
    lo_px, hi_px = ORGAN_MM[0] / mm, ORGAN_MM[1] / mm
    zones = [flat]
    # Tissues whose boundary is too gentle for the edges: levels of like value, twice (offset by
    # half a level, so a tissue near one level's boundary is whole in the other).
    smallest = (lo_px / 2) ** 2
    for offset in (0.0, ORGAN_LEVEL / 2):
        levels = np.floor((units + offset) / ORGAN_LEVEL).astype(np.int64)
        values, counts = np.unique(levels[body], return_counts=True)
        zones += [(levels == level) & body for level in values[counts >= smallest]]
    out = []
    for zone in zones:
        out += _zones(ndimage.binary_opening(zone, iterations=neck), step, mm, lo_px, hi_px)
    return np.asarray(out, dtype=np.float32).reshape(-1, 5)


def _zones(zone: np.ndarray, step: int, mm: float, lo_px: float, hi_px: float) -> list[tuple]:
    labels, _ = ndimage.label(zone)
    out = []
    for number, where in enumerate(ndimage.find_objects(labels)):
        if where is None:
            continue
        ys, xs = where
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if not lo_px <= max(w, h) <= hi_px or min(w, h) < lo_px / 2:
            continue
        area = float(np.count_nonzero(ndimage.binary_fill_holes(labels[where] == number + 1)))
        if area < 0.25 * w * h:
            continue  # a thin shell or a scatter, not an organ
        out.append((xs.start * step, ys.start * step, w * step, h * step, area * mm * mm))
    return out


def _structures(residue: np.ndarray, mm: float) -> np.ndarray:
    """Boxes (and core boxes) of the connected parts of ``residue`` above :data:`CONTRAST`; a part
    too large is split by thresholding its pixels again at :data:`SPLIT` times the level.

    Returns:
        float32 (N, 6): ``x, y, w, h``, the integrated residue, and how many splits found it (0:
        a structure at :data:`CONTRAST`).
    """
    smallest = max(1.0, (MIN_MM / mm) ** 2 / 4)  # a structure whose box reaches MIN_MM has at least about this many pixels
    peak = float(residue.max()) if residue.size else 0.0
    out: list[tuple] = []
    level, allowed, depth = CONTRAST, None, 0
    while level < peak:
        above = residue > level if allowed is None else (residue > level) & allowed
        labels, n = ndimage.label(above)
        if n == 0:
            break
        counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        sums = np.bincount(labels.ravel(), weights=residue.ravel(), minlength=n + 1)[1:]
        too_large = []
        for number, where in enumerate(ndimage.find_objects(labels)):
            if where is None or counts[number] < smallest:
                continue
            ys, xs = where
            whole = (xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
            if max(whole[2], whole[3]) * mm > MAX_MM:
                too_large.append(number + 1)
                continue
            if max(whole[2], whole[3]) * mm < MIN_MM:
                continue
            out.append((*whole, float(sums[number]), depth))
            part = residue[where] * (labels[where] == number + 1)
            core = part >= CORE * float(part.max())
            rows, cols = np.nonzero(core)
            if rows.size:
                box = (xs.start + cols.min(), ys.start + rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
                if box != whole and max(box[2], box[3]) * mm >= MIN_MM:
                    out.append((*box, float(part[core].sum()), depth))
        if not too_large:
            break
        allowed = np.isin(labels, too_large)
        level *= SPLIT
        depth += 1
    return np.asarray(out, dtype=np.float32).reshape(-1, 6)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, ≥4: x, y, w, h) with every box of ``b`` (M, ≥4): (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1] if np.ndim(a) > 1 else 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, b.shape[-1] if np.ndim(b) > 1 else 4)
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _suppress(boxes: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    if not len(boxes) or limit < 1:
        return boxes[:0]
    boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
    overlaps = box_iou(boxes, boxes) > threshold  # one matrix: a few hundred candidates at most
    dropped = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if dropped[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        dropped |= overlaps[i]
    return boxes[keep]
