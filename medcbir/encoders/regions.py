"""Regions of an image: proposals described for region search, and query boxes described alike.

:func:`extract_regions` is what ``medcbir index`` stores beside each slice embedding: the boxes
of the structures that stand out in the frame (:mod:`medcbir.encoders.region_proposals`), in the
frame's stored pixel grid, with their descriptors (:mod:`medcbir.encoders.region_descriptor`).
:func:`describe_query` describes a box (or a mask) a user drew on a query image the same way.

Region descriptors do not depend on the slice encoder: a classic index, a trained network and a
user's own encoder store the same regions, and an index can be re-encoded without re-describing
them. Their identity (:data:`REGIONS_VERSION`) is recorded in the manifest.

:class:`WithRegions` wraps an encoder's preprocessing for the decode workers: each decoded item
comes back with its :class:`RegionSet` in ``Decoded.extras["regions"]``, computed where the frame
in modality units already is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcbir.encoders import region_descriptor, region_proposals
from medcbir.encoders.region_image import RESOLUTION_MM, DegenerateFrame, region_image
from medcbir.errors import ConfigError
from medcbir.imaging.items import Item

log = logging.getLogger(__name__)

#: The region recipe (proposals + descriptor); an index records it and refuses another.
REGIONS_VERSION = f"{region_descriptor.NAME}/proposals-v3/resolution-{RESOLUTION_MM:g}mm"
#: Structures kept per image by default (parts of split structures and organ zones come on top:
#: region_proposals.most_regions).
PER_IMAGE = region_proposals.LIMIT
DIM = region_descriptor.DIM


@dataclass(frozen=True)
class RegionSet:
    """The regions of one frame.

    Attributes:
        boxes: int32 (N, 4) ``x, y, w, h`` in the frame's stored pixel grid (x = column).
        descriptors: float32 (N, :data:`DIM`).
    """

    boxes: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> "RegionSet":
        return cls(np.zeros((0, 4), dtype=np.int32), np.zeros((0, DIM), dtype=np.float32))


def extract_regions(item: Item, limit: int = PER_IMAGE) -> RegionSet:
    """The proposals of ``item`` (modality units), described; empty for a frame without structure."""
    image = region_image(item)
    found = region_proposals.propose(image, limit=limit)
    if not len(found):
        return RegionSet.empty()
    descriptors = region_descriptor.describe(image, found[:, :4])
    boxes = image.boxes_to_stored(found[:, :4])
    return RegionSet(boxes, descriptors)


def describe_query(item: Item, box, *, snap: bool = False) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Describe a box drawn on a query frame.

    Args:
        item: the query frame (modality units).
        box: ``(x, y, w, h)`` in its stored pixel grid (checked with :func:`check_box`).
        snap: replace the box by the proposal that overlaps it best (IoU ≥ 0.3), when there is
            one: a loosely drawn box then describes the structure it was drawn around.

    Returns:
        (float32 descriptor of length :data:`DIM`, the box described, in the stored grid).
    """
    box = check_box(box, item.pixels.shape)
    image = region_image(item)
    grid_box = np.asarray(image.to_grid(box), dtype=np.float64)
    if snap:
        found = region_proposals.propose(image)
        if len(found):
            overlap = region_proposals.box_iou(grid_box[None], found[:, :4])[0]
            best = int(np.argmax(overlap))
            if overlap[best] >= 0.3:
                grid_box = found[best, :4].astype(np.float64)
                box = image.to_stored(grid_box)
    return region_descriptor.describe(image, grid_box[None])[0], tuple(int(v) for v in box)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"X,Y,W,H"`` → ints (the CLI's ``--roi``)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise ConfigError(f"--roi takes X,Y,W,H (column, row of the top-left corner, width, height in pixels), not {text!r}")
    try:
        values = tuple(int(round(float(p))) for p in parts)
    except ValueError:
        raise ConfigError(f"--roi takes four numbers X,Y,W,H, not {text!r}") from None
    return values  # type: ignore[return-value]


def check_box(box, shape) -> tuple[int, int, int, int]:
    """A box ``(x, y, w, h)`` that lies in a frame of ``shape`` (rows, cols), as ints.

    Raises:
        ConfigError: not four numbers, empty, or outside the frame.
    """
    try:
        x, y, w, h = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise ConfigError(f"a region is [x, y, w, h] (four numbers), not {box!r}") from None
    rows, cols = int(shape[0]), int(shape[1])
    if w < 1 or h < 1:
        raise ConfigError(f"the region {x},{y},{w},{h} is empty (width and height must be ≥ 1 pixel)")
    if x < 0 or y < 0 or x + w > cols or y + h > rows:
        raise ConfigError(f"the region {x},{y},{w},{h} is outside the query image ({cols} columns × {rows} rows)")
    return x, y, w, h


def mask_box(mask, shape) -> tuple[int, int, int, int]:
    """The bounding box of a region mask (a 2-D array, or a PNG / .npy file) on a frame of ``shape``.

    Raises:
        ConfigError: unreadable, another size than the frame, or empty.
    """
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        try:
            if path.suffix.lower() == ".npy":
                mask = np.load(path, allow_pickle=False)
            else:
                from PIL import Image

                with Image.open(path) as img:
                    mask = np.asarray(img.convert("L"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--roi-mask {path}: cannot read it as a PNG or .npy mask ({exc})") from None
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.any(axis=-1)
    if mask.shape != tuple(int(s) for s in shape[:2]):
        raise ConfigError(f"the region mask is {mask.shape[1]}×{mask.shape[0]} pixels; the query image is {shape[1]}×{shape[0]}")
    rows, cols = np.nonzero(mask)
    if not rows.size:
        raise ConfigError("the region mask is empty (no non-zero pixel)")
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


class WithRegions:
    """An encoder's preprocessing that also extracts each item's regions (for the decode workers).

    ``apply`` is the wrapped preprocessing's; ``extras(item)`` gives ``{"regions": RegionSet}``.
    Picklable: it travels to decode worker processes.
    """

    def __init__(self, preprocessing, limit: int = PER_IMAGE) -> None:
        self.preprocessing = preprocessing
        self.limit = int(limit)

    def apply(self, item: Item) -> np.ndarray:
        return self.preprocessing.apply(item)

    def extras(self, item: Item) -> dict:
        try:
            regions = extract_regions(item, self.limit)
        except DegenerateFrame:
            regions = RegionSet.empty()  # no structure to search by
        except (ValueError, FloatingPointError, ArithmeticError) as exc:
            # The item is still indexed (its embedding does not depend on this); say why it has no regions.
            log.warning("no regions for %s frame %s: %s", item.meta.sop_instance_uid, item.meta.frame, exc)
            regions = RegionSet.empty()
        return {"regions": regions}

    def __getattr__(self, name):  # channels, size, ...: the wrapped preprocessing's
        if name == "preprocessing":
            raise AttributeError(name)
        return getattr(self.preprocessing, name)


class RegionsOnly(WithRegions):
    """Decoding that only finds each item's regions (re-describing the regions of an existing
    index: :mod:`medcbir.indexer.region_refresh`). The slice encoder's input is not needed, so
    ``apply`` gives an empty array and no image crosses from the decode workers."""

    def __init__(self, limit: int = PER_IMAGE) -> None:
        super().__init__(None, limit)

    def apply(self, item: Item) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)
