"""Explaining a region match: which pixels of a neighbour make its region match the query's region.

A region query (:mod:`medcbir.engine.region_search`) ranks the regions of indexed images by the
scaled Euclidean distance between *measured* descriptors (:mod:`medcbir.encoders.region_descriptor`):
no network, so no gradient, but a score that is a function of pixels. Perturbation methods explain
it directly. For each neighbour, on the region grid where the descriptor measures:

- the **neighbourhood** is every pixel the descriptor of the matched box reads (its polar grid
  reaches 1.7× the half-sides of each box variant it averages over, :func:`reach`; pixels outside
  cannot change the match, their map is 0);
- a pixel is **occluded** by replacing it with the *local smooth background*: the median of the
  image over a square twice the box's longer side (a structure smaller than the box's scale
  disappears in it), computed on a coarse grid and smoothed;
- the perturbed neighbourhood is **re-described with the same box** and re-scored against the
  query's scaled descriptor, ``s = 1 / (1 + d² / D)`` as the search scores it.

Methods (:data:`REGION_METHODS`):

``relax``
    Wickstrøm et al., "RELAX" (IJCV 2023), for this score: N random masks M (RELAX's Bernoulli
    cells, bilinearly upsampled and shifted, :mod:`medcbir.explain.masks`; scrambled-Sobol cells)
    over the neighbourhood keep pixels where M = 1 and blend towards the background elsewhere;
    (cells half the box's side) with s_n the score of masked copy n, the map is RELAX's mask-weighted mean similarity minus the
    mean similarity, ``R_ij = Σ_n s_n M_ij(n) / Σ_n M_ij(n) − mean_n s_n``: how much keeping the
    pixel raises the match above its average under masking (positive = supports the match).
``occlusion``
    Zeiler & Fergus (ECCV 2014): a square patch (half the box's shorter side) slides over
    the neighbourhood with half-patch steps; each pixel gets the mean score drop ``s_0 − s`` of the
    patches covering it.

Every perturbed copy of a neighbourhood is a tile of one tall image described in one call of
:func:`~medcbir.encoders.region_descriptor.describe` (each tile is padded by edge replication to
the descriptor's full reach, so its samples never read a neighbouring tile and match what the
descriptor reads on the whole frame, clamped at its border). The image's pixel-noise estimate is
the unperturbed frame's. Maps are carried from the region grid back to the neighbour's stored
pixel grid (identity when the grid is the stored one).

Example:
    >>> from medcbir.engine import Engine
    >>> with Engine.open("index-v3") as engine:  # doctest: +SKIP
    ...     shown = explain_region_match(engine, "query.dcm", (120, 96, 18, 16), k=5)
    >>> shown.maps.shape  # doctest: +SKIP
    (5, 256, 256)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from medcbir.encoders import region_descriptor
from medcbir.encoders.region_image import RegionImage, region_image
from medcbir.engine.region_search import RegionIndex, _query_item, resolve_region_query
from medcbir.errors import ConfigError
from medcbir.imaging.windows import window_range

REGION_METHODS = ("relax", "occlusion")
#: RELAX masks per neighbour by default.
RELAX_MASKS = 500
#: RELAX mask cell side as a fraction of the box's longer side (finer cells measured noisier maps
#: that localise lesions worse, see docs/regions.md).
RELAX_CELL = 0.5
#: RELAX keep probability of a cell.
RELAX_P = 0.5
#: Occlusion patch side as a fraction of the box's shorter side.
OCCLUSION_SIDE = 0.5
#: The background median runs on a grid where its footprint is at most this many pixels wide.
MEDIAN_PX = 25
#: Perturbed pixels per describe() call (bounds memory: 4 bytes each).
PIXEL_BUDGET = 4_000_000
#: Display window of CT frames in the overlays (ct-abdomen, L40 W400).
CT_DISPLAY = (-160.0, 240.0)


@dataclass
class RegionExplanation:
    """The result of :func:`explain_region_match`.

    Attributes:
        method: ``"relax"`` or ``"occlusion"``.
        query_label: how the query was given (path or UID).
        query_box: the query region ``(x, y, w, h)`` described (after ``snap``).
        neighbours: the engine's region neighbours (each with ``.region``), best first.
        maps: K×H×W float32, each neighbour's map on its stored pixel grid (frames of different
            sizes are zero-padded at the bottom and right to the largest; ``shapes`` gives each).
        shapes: (rows, cols) of each neighbour's frame.
        windows: K×4 int, each neighbour's neighbourhood ``(x, y, w, h)`` in its stored grid
            (the map is 0 outside it).
        match_scores: K, the matched box re-described from the decoded frame and scored against
            the query (the baseline the perturbations move; equals the search's score up to the
            box's rounding to the stored grid).
        images: each neighbour's frame (H×W float32, modality units), for overlays.
        display: (lo, hi) display window of each neighbour's frame.
        query_image, query_display: the query frame and its display window.
        n_masks: RELAX masks per neighbour (None for occlusion).
        seed: the mask seed.
        seconds: explanation time (decode + maps), ``search_seconds`` the search's.
    """

    method: str
    query_label: str
    query_box: tuple[int, int, int, int]
    neighbours: list
    maps: np.ndarray
    shapes: list[tuple[int, int]]
    windows: np.ndarray
    match_scores: np.ndarray
    images: list[np.ndarray] = field(default_factory=list, repr=False)
    display: list[tuple[float, float]] = field(default_factory=list, repr=False)
    query_image: np.ndarray | None = field(default=None, repr=False)
    query_display: tuple[float, float] = (0.0, 1.0)
    n_masks: int | None = None
    seed: int = 0
    seconds: float = 0.0
    search_seconds: float = 0.0

    def map_of(self, i: int) -> np.ndarray:
        """Neighbour ``i``'s map at its own frame size."""
        rows, cols = self.shapes[i]
        return self.maps[i, :rows, :cols]

    def share_in_region(self, i: int) -> float:
        """Share of neighbour ``i``'s positive map mass inside its matched box."""
        heat = np.clip(self.map_of(i), 0.0, None)
        total = float(heat.sum())
        if total <= 0:
            return 0.0
        x, y, w, h = self.neighbours[i].region
        return float(heat[y:y + h, x:x + w].sum() / total)

    def to_dict(self) -> dict:
        """JSON-ready summary (no pixel arrays)."""
        from medcbir.explain.runner import display_meta

        return {
            "method": self.method,
            "query": {"label": self.query_label, "region": list(self.query_box)},
            "neighbours": [
                {"rank": nb.rank, "id": nb.id, "score": nb.score, "match_score": float(self.match_scores[i]),
                 "region": [int(v) for v in nb.region], "window": [int(v) for v in self.windows[i]],
                 "share_in_region": round(self.share_in_region(i), 4), **display_meta(nb.meta)}
                for i, nb in enumerate(self.neighbours)
            ],
            "map_shape": list(self.maps.shape),
            "n_masks": self.n_masks,
            "seed": self.seed,
            "explain_seconds": round(self.seconds, 3),
            "search_seconds": round(self.search_seconds, 3),
        }


@dataclass(frozen=True)
class Neighbourhood:
    """The pixels a box's descriptor reads, on the region grid, with their local background.

    Attributes:
        image: the frame on the region grid.
        box: the box on the grid (floats ``x, y, w, h``).
        rows, cols: the neighbourhood, clipped to the grid.
        pad: edge padding ``((top, bottom), (left, right))`` from the clipped neighbourhood to the
            descriptor's full reach (non-zero only at the frame's border).
        crop: float32 the grid's units in the neighbourhood.
        background: float32 the local smooth background there.
    """

    image: RegionImage
    box: tuple[float, float, float, float]
    rows: slice
    cols: slice
    pad: tuple[tuple[int, int], tuple[int, int]]
    crop: np.ndarray
    background: np.ndarray

    @classmethod
    def around(cls, image: RegionImage, box) -> "Neighbourhood":
        x, y, w, h = (float(v) for v in box)
        rx, ry = max(w / 2, 0.5), max(h / 2, 0.5)
        cx, cy = x + w / 2, y + h / 2
        # samples lie within centre ± reach() × half-side (pixel centres at +0.5); bilinear reads one more
        far = reach()
        x0, x1 = math.floor(cx - rx * far - 0.5) - 1, math.floor(cx + rx * far - 0.5) + 3
        y0, y1 = math.floor(cy - ry * far - 0.5) - 1, math.floor(cy + ry * far - 0.5) + 3
        gh, gw = image.units.shape
        rows, cols = slice(max(0, y0), min(gh, y1)), slice(max(0, x0), min(gw, x1))
        pad = ((rows.start - y0, y1 - rows.stop), (cols.start - x0, x1 - cols.stop))
        crop = np.ascontiguousarray(image.units[rows, cols], dtype=np.float32)
        return cls(image, (x, y, w, h), rows, cols, pad, crop, local_background(image.units, (x, y, w, h), rows, cols))

    @property
    def shape(self) -> tuple[int, int]:
        return self.crop.shape

    def cells(self, fraction: float = RELAX_CELL) -> int:
        """RELAX cells per side so that a cell is ``fraction`` of the box's longer side."""
        side = max(self.box[2], self.box[3], 1.0)
        return max(3, round(max(self.shape) / (fraction * side)))

    def describe(self, crops: np.ndarray) -> np.ndarray:
        """Descriptors of the box in each of ``crops`` (n × the neighbourhood's shape), one describe() call per chunk."""
        crops = np.asarray(crops, dtype=np.float32).reshape(-1, *self.shape)
        tiles_rows = self.shape[0] + sum(self.pad[0])
        tiles_cols = self.shape[1] + sum(self.pad[1])
        chunk = max(1, PIXEL_BUDGET // (tiles_rows * tiles_cols))
        x, y, w, h = self.box
        ox, oy = self.cols.start - self.pad[1][0], self.rows.start - self.pad[0][0]
        out = []
        for start in range(0, len(crops), chunk):
            part = crops[start:start + chunk]
            tiles = np.pad(part, ((0, 0), *self.pad), mode="edge") if any(sum(p) for p in self.pad) else part
            stacked = replace(self.image, units=tiles.reshape(-1, tiles_cols))
            offsets = np.arange(len(part)) * tiles_rows
            boxes = np.stack([np.full(len(part), x - ox), y - oy + offsets, np.full(len(part), w), np.full(len(part), h)], axis=1)
            out.append(region_descriptor.describe(stacked, boxes))
        return np.concatenate(out) if out else np.zeros((0, region_descriptor.DIM), np.float32)

    def to_stored(self, grid_map: np.ndarray) -> np.ndarray:
        """A map over the neighbourhood (its shape) → float32 map over the stored frame (0 outside)."""
        full = np.zeros(self.image.units.shape, dtype=np.float32)
        full[self.rows, self.cols] = grid_map
        rows, cols = self.image.shape
        if full.shape == (rows, cols):
            return full
        sy, sx = self.image.scale
        yy = (np.arange(rows) + 0.5) * sy - 0.5
        xx = (np.arange(cols) + 0.5) * sx - 0.5
        return ndimage.map_coordinates(full, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest").astype(np.float32)

    def from_stored(self, stored_map: np.ndarray) -> np.ndarray:
        """A map over the stored frame → float32 over the neighbourhood (its shape; linear): the
        inverse of :meth:`to_stored`."""
        sy, sx = self.image.scale
        yy = (np.arange(self.rows.start, self.rows.stop) + 0.5) / sy - 0.5
        xx = (np.arange(self.cols.start, self.cols.stop) + 0.5) / sx - 0.5
        grid = np.meshgrid(yy, xx, indexing="ij")
        return ndimage.map_coordinates(np.asarray(stored_map, dtype=np.float32), grid, order=1, mode="nearest").astype(np.float32)

    def stored_window(self) -> tuple[int, int, int, int]:
        """The neighbourhood as an ``(x, y, w, h)`` box of the stored grid."""
        return self.image.to_stored((self.cols.start, self.rows.start, self.cols.stop - self.cols.start, self.rows.stop - self.rows.start))


def reach() -> float:
    """How far from a box's centre the descriptor reads, in half-sides: its polar grid's
    :data:`~medcbir.encoders.region_descriptor.REACH` for the largest and most shifted of the box
    variants it averages over (``JITTER``: scale, shift as a fraction of the side)."""
    variants = getattr(region_descriptor, "JITTER", ((1.0, 0.0, 0.0),))
    return max(2 * max(abs(dx), abs(dy)) + scale * region_descriptor.REACH for scale, dx, dy in variants)


def local_background(units: np.ndarray, box, rows: slice, cols: slice) -> np.ndarray:
    """The image with structures of the box's scale removed, over ``rows, cols`` (float32).

    The median over a square of side twice the box's longer side (a structure filling the box
    covers about a fifth of it, so the median is its surroundings), run on a grid coarse enough
    that the square is at most :data:`MEDIAN_PX` pixels, brought back and smoothed.
    """
    _, _, w, h = box
    side = max(2.0, float(max(w, h)))
    size = int(2 * side) | 1
    margin = size // 2
    gh, gw = units.shape
    r0, r1 = max(0, rows.start - margin), min(gh, rows.stop + margin)
    c0, c1 = max(0, cols.start - margin), min(gw, cols.stop + margin)
    context = np.asarray(units[r0:r1, c0:c1], dtype=np.float32)
    factor = max(1, math.ceil(size / MEDIAN_PX))
    small = context if factor == 1 else ndimage.zoom(context, 1.0 / factor, order=1, grid_mode=True, mode="nearest")
    small = ndimage.median_filter(small, size=max(3, int(size / factor) | 1), mode="nearest")
    if small.shape != context.shape:
        yy = (np.arange(context.shape[0]) + 0.5) * small.shape[0] / context.shape[0] - 0.5
        xx = (np.arange(context.shape[1]) + 0.5) * small.shape[1] / context.shape[1] - 0.5
        small = ndimage.map_coordinates(small, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
    smooth = ndimage.gaussian_filter(small, max(1.0, side / 4), mode="nearest")
    return np.ascontiguousarray(smooth[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0], dtype=np.float32)


class MatchScore:
    """``descriptors → 1 / (1 + d² / D)`` against one scaled query descriptor, as region search scores."""

    def __init__(self, metric, target: np.ndarray) -> None:
        self.metric = metric
        self.target = np.asarray(target, dtype=np.float32).reshape(-1)

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        d2 = ((self.metric(descriptors).astype(np.float64) - self.target) ** 2).sum(axis=1)
        return 1.0 / (1.0 + d2 / self.target.shape[0])


def relax_map(hood: Neighbourhood, score: MatchScore, n_masks: int = RELAX_MASKS, seed: int = 0, grid: int | None = None,
              p: float = RELAX_P) -> np.ndarray:
    """RELAX importance over the neighbourhood (its shape, float32; see the module docstring).

    ``grid``: cells per side of the neighbourhood (default: cells of :data:`RELAX_CELL` × the box's side).
    """
    from medcbir.explain.masks import MaskDraw

    if n_masks < 2:
        raise ConfigError("a region RELAX map needs at least 2 masks")
    draw = MaskDraw.draw(int(n_masks), int(grid or hood.cells()), p, seed, "sobol")
    rows, cols = hood.shape
    per = max(1, PIXEL_BUDGET // (rows * cols))
    weight = np.zeros(rows * cols)
    weighted = np.zeros(rows * cols)
    total = 0.0
    for start in range(0, int(n_masks), per):
        stop = min(int(n_masks), start + per)
        masks = draw.masks(start, stop, (rows, cols)).numpy()
        crops = hood.background + masks * (hood.crop - hood.background)
        s = score(hood.describe(crops))
        flat = masks.reshape(stop - start, -1).astype(np.float64)
        weight += flat.sum(axis=0)
        weighted += s @ flat
        total += float(s.sum())
    importance = weighted / (weight + 1e-10) - total / int(n_masks)
    return importance.reshape(rows, cols).astype(np.float32)


def occlusion_map(hood: Neighbourhood, score: MatchScore, side: int | None = None, stride: int | None = None) -> np.ndarray:
    """Mean score drop of the background patches covering each pixel (the neighbourhood's shape, float32)."""
    rows, cols = hood.shape
    _, _, w, h = hood.box
    side = int(side or max(2, round(min(w, h) * OCCLUSION_SIDE)))
    side = min(side, rows, cols)
    stride = int(stride or max(1, side // 2))
    ys = _starts(rows, side, stride)
    xs = _starts(cols, side, stride)
    crops = np.repeat(hood.crop[None], len(ys) * len(xs), axis=0)
    for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
        crops[i, y:y + side, x:x + side] = hood.background[y:y + side, x:x + side]
    base = float(score(hood.describe(hood.crop[None]))[0])
    drops = base - score(hood.describe(crops))
    total = np.zeros((rows, cols))
    count = np.zeros((rows, cols))
    for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
        total[y:y + side, x:x + side] += drops[i]
        count[y:y + side, x:x + side] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def _starts(length: int, side: int, stride: int) -> list[int]:
    starts = list(range(0, max(1, length - side + 1), stride))
    if starts[-1] != length - side:
        starts.append(max(0, length - side))
    return starts


def region_match_maps(items, boxes, score: MatchScore, method: str = "relax", *, n_masks: int | None = None, seed: int = 0,
                      grid: int | None = None, hoods=None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Maps of why each box of each item matches (the index-free core of :func:`explain_region_match`).

    Args:
        items: :class:`~medcbir.imaging.Item` s in modality units (the neighbours' frames).
        boxes: one ``(x, y, w, h)`` per item, in its stored pixel grid (the matched regions).
        score: the query's :class:`MatchScore`.
        method: one of :data:`REGION_METHODS`.
        n_masks: RELAX masks per item (default :data:`RELAX_MASKS`).
        seed: RELAX mask seed (the same masks for every item).
        grid: RELAX cells per side of a neighbourhood (default: half the box's side each).
        hoods: the items' :class:`Neighbourhood` s around their boxes, when the caller has them
            (:func:`neighbourhoods`; several methods on the same neighbours build them once).

    Returns:
        (one float32 map per item on its stored grid, K unperturbed match scores, K×4 stored
        neighbourhood windows).
    """
    check_region_method(method)
    maps, scores, windows = [], [], []
    for hood in (hoods if hoods is not None else neighbourhoods(items, boxes)):
        scores.append(float(score(hood.describe(hood.crop[None]))[0]))
        if method == "relax":
            grid_map = relax_map(hood, score, n_masks=int(n_masks or RELAX_MASKS), seed=seed, grid=grid)
        else:
            grid_map = occlusion_map(hood, score)
        maps.append(hood.to_stored(grid_map))
        windows.append(hood.stored_window())
    return maps, np.asarray(scores, dtype=np.float64), np.asarray(windows, dtype=np.int64).reshape(-1, 4)


def neighbourhoods(items, boxes) -> list[Neighbourhood]:
    """The :class:`Neighbourhood` of each item's box (``(x, y, w, h)`` in its stored pixel grid)."""
    out = []
    for item, box in zip(items, boxes):
        image = region_image(item)
        out.append(Neighbourhood.around(image, image.to_grid(box)))
    return out


def check_region_method(method: str) -> None:
    if method not in REGION_METHODS:
        raise ConfigError(f"a region match is explained by perturbation ({', '.join(REGION_METHODS)}), not {method!r}: "
                          "region descriptors are measured, not a network with gradients or feature maps")


def display_window(item) -> tuple[float, float]:
    """(lo, hi) to show a frame: the abdominal window for CT, the foreground's robust range otherwise."""
    if (item.meta.modality or "").upper() == "CT":
        return CT_DISPLAY
    return window_range("robust", item=item)


def stack_maps(maps: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """K maps of possibly different sizes → K×H×W float32 (zero-padded bottom/right) and their shapes."""
    shapes = [tuple(int(s) for s in m.shape) for m in maps]
    if not maps:
        return np.zeros((0, 0, 0), dtype=np.float32), shapes
    rows, cols = max(s[0] for s in shapes), max(s[1] for s in shapes)
    out = np.zeros((len(maps), rows, cols), dtype=np.float32)
    for i, m in enumerate(maps):
        out[i, :m.shape[0], :m.shape[1]] = m
    return out, shapes


def explain_region_match(engine, query, roi=None, k: int = 5, *, roi_mask=None, exclude: str = "same-patient", method: str = "relax",
                         n_masks: int | None = None, seed: int = 0, snap: bool = False, grid: int | None = None) -> RegionExplanation:
    """Search by region, then explain why each neighbour's region matches the query's region.

    Args:
        engine: an open :class:`medcbir.engine.Engine` whose index has regions.
        query: a DICOM path, an indexed SOP UID (``UID[:frame]``, its file readable), an ``Item``
            or an H×W array in modality units.
        roi: the query box ``(x, y, w, h)`` in the query frame's stored pixel grid.
        k: neighbours.
        roi_mask: instead of ``roi``, a mask (array, PNG or .npy path) on that grid.
        exclude: the search's exclusion (``"same-patient"``, ``"same-study"``, ``"none"``).
        method: ``"relax"`` or ``"occlusion"``.
        n_masks: RELAX masks per neighbour (default :data:`RELAX_MASKS`).
        seed: RELAX mask seed; the maps are a function of the index, the query and the seed.
        snap: describe the structure the box was drawn around (as ``search --snap``).
        grid: RELAX cells per side of a neighbourhood (default: half the box's side each).

    Returns:
        A :class:`RegionExplanation`.
    """
    from medcbir.explain.runner import decode_item

    check_region_method(method)
    t0 = time.perf_counter()
    item, label = _query_item(engine, query)
    resolved = resolve_region_query(engine, item, roi, roi_mask, snap=snap)
    [neighbours] = engine.search([item], k=k, exclude=exclude, roi=roi, roi_mask=roi_mask, snap=snap)
    search_seconds = time.perf_counter() - t0
    regions = RegionIndex.of(engine)
    score = MatchScore(regions.metric, regions.metric(resolved.descriptor)[0])
    t0 = time.perf_counter()
    items = [decode_item(nb.meta, engine.pseudonym_key) for nb in neighbours]
    maps, scores, windows = region_match_maps(items, [nb.region for nb in neighbours], score, method, n_masks=n_masks, seed=seed, grid=grid)
    stacked, shapes = stack_maps(maps)
    return RegionExplanation(
        method=method, query_label=label, query_box=tuple(int(v) for v in resolved.box), neighbours=neighbours, maps=stacked,
        shapes=shapes, windows=windows, match_scores=scores, images=[np.asarray(it.pixels, dtype=np.float32) for it in items],
        display=[display_window(it) for it in items], query_image=np.asarray(item.pixels, dtype=np.float32),
        query_display=display_window(item), n_masks=int(n_masks or RELAX_MASKS) if method == "relax" else None, seed=int(seed),
        seconds=time.perf_counter() - t0, search_seconds=search_seconds,
    )


__all__ = ["REGION_METHODS", "MatchScore", "Neighbourhood", "RegionExplanation", "explain_region_match", "local_background", "reach",
           "occlusion_map", "region_match_maps", "relax_map"]
