"""Region proposals and descriptors on synthetic frames with known structures (real arrays, no mocks)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import ndimage

from medcbir.encoders import region_descriptor, region_proposals
from medcbir.encoders.region_image import region_image
from medcbir.encoders.region_proposals import box_iou, propose
from medcbir.encoders.regions import DIM, WithRegions, check_box, describe_query, extract_regions, mask_box, parse_box
from medcbir.errors import ConfigError
from medcbir.imaging import Preprocessing
from medcbir.imaging.items import Item, ItemMeta


def ellipse(shape, centre, radii, spacing):
    """Mask of an ellipse given in mm (centre x, y and radii x, y) on a grid of ``spacing`` mm."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    x, y = (cols + 0.5) * spacing, (rows + 0.5) * spacing
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1.0


def abdomen(spacing: float, fov_mm: float = 360.0, seed: int = 0, lesions=("cyst", "hyper", "ring"), rotate: bool = False):
    """A CT-like frame in HU: a body, a liver, and lesions of three looks at fixed places (in mm)."""
    n = int(round(fov_mm / spacing))
    image = np.full((n, n), -1000.0, np.float32)
    image[ellipse((n, n), (180, 180), (150, 120), spacing)] = 40.0  # soft tissue
    image[ellipse((n, n), (130, 170), (70, 60), spacing)] = 60.0  # liver
    for kind in lesions:
        if kind == "cyst":
            image[ellipse((n, n), (110, 150), (12, 12), spacing)] = 5.0
        elif kind == "hyper":
            image[ellipse((n, n), (160, 190), (9, 9), spacing)] = 160.0
        elif kind == "ring":
            image[ellipse((n, n), (120, 200), (11, 11), spacing)] = 150.0
            image[ellipse((n, n), (120, 200), (7, 7), spacing)] = 20.0
    image = ndimage.gaussian_filter(image, 0.8 / spacing)
    image += np.random.default_rng(seed).normal(0, 8, image.shape).astype(np.float32)
    if rotate:
        image = np.rot90(image).copy()
    meta = ItemMeta(sop_instance_uid="1.2.3", modality="CT", pixel_spacing=(spacing, spacing), rows=n, cols=n)
    return Item(meta=meta, pixels=image)


def stored_box(centre_mm, radius_mm, spacing):
    x0 = int(round((centre_mm[0] - radius_mm) / spacing))
    y0 = int(round((centre_mm[1] - radius_mm) / spacing))
    side = int(round(2 * radius_mm / spacing))
    return (x0, y0, side, side)


LESIONS = {"cyst": ((110, 150), 12), "hyper": ((160, 190), 9), "ring": ((120, 200), 11)}


@pytest.mark.parametrize("spacing", [0.7, 1.0, 1.4])
def test_every_lesion_is_proposed_at_any_field_of_view(spacing):
    item = abdomen(spacing)
    regions = extract_regions(item)
    assert 0 < len(regions) <= region_proposals.most_regions(64) and regions.descriptors.shape == (len(regions), DIM)
    assert np.isfinite(regions.descriptors).all()
    for name, (centre, radius) in LESIONS.items():
        truth = np.array([stored_box(centre, radius, spacing)])
        assert box_iou(truth, regions.boxes).max() > 0.5, name


def test_a_lesion_is_described_alike_at_another_field_of_view_and_rotated():
    """The same lesion (box in mm) gives nearly the same descriptor at 0.7 and 1.4 mm per pixel and
    rotated by 90°; another kind of lesion gives a clearly different one."""
    def descriptor(spacing, name, rotate=False):
        item = abdomen(spacing, rotate=rotate)
        box = stored_box(*LESIONS[name], spacing)
        if rotate:  # rot90 maps (x, y) → (y, n - x - w)
            n = item.pixels.shape[0]
            box = (box[1], n - box[0] - box[2], box[3], box[2])
        return describe_query(item, box)[0]

    base = {name: descriptor(1.0, name) for name in LESIONS}
    # each property by how much it varies over every region proposed in a few frames
    spread = np.concatenate([extract_regions(abdomen(s, seed=i)).descriptors for i, s in enumerate((0.8, 1.0, 1.2))]).std(axis=0) + 1e-2
    for name in LESIONS:
        other = min(np.linalg.norm((base[name] - base[o]) / spread) for o in LESIONS if o != name)
        for variant in (descriptor(0.7, name), descriptor(1.4, name), descriptor(1.0, name, rotate=True)):
            assert np.linalg.norm((variant - base[name]) / spread) < 0.5 * other, name


def test_a_flat_frame_has_no_regions_and_mr_gets_pseudo_units():
    flat = Item(ItemMeta(sop_instance_uid="1", modality="CT", pixel_spacing=(1.0, 1.0)), np.full((64, 64), 40.0, np.float32))
    assert len(extract_regions(flat)) == 0
    mr = abdomen(1.0)
    mr = Item(ItemMeta(sop_instance_uid="1", modality="MR", pixel_spacing=(1.0, 1.0)), (mr.pixels + 1000.0) * 3.7)
    image = region_image(mr)
    assert not image.hounsfield and abs(float(np.median(image.units[image.body]))) < 50
    regions = extract_regions(mr)
    truth = np.array([stored_box(*LESIONS["cyst"], 1.0)])
    assert box_iou(truth, regions.boxes).max() > 0.5  # an arbitrary intensity scale finds the same cyst


def test_proposals_are_ranked_and_limited():
    """Structures best first and at most ``limit``; then parts of split structures (at most
    ``split_limit``); organ zones last, largest first, on top of both."""
    image = region_image(abdomen(1.0))
    found = propose(image, limit=3)
    assert len(found) <= region_proposals.most_regions(3)
    organ_sized = np.maximum(found[:, 2], found[:, 3]) * image.mm >= region_proposals.ORGAN_MM[0]
    first_organ = int(np.argmax(organ_sized))
    structures, organs = found[:3], found[first_organ:]
    assert len(structures) == 3 and np.all(np.diff(structures[:, 4]) <= 0)
    assert first_organ - 3 <= region_proposals.split_limit(3)
    assert 1 <= len(organs) <= region_proposals.ORGAN_LIMIT and organ_sized[first_organ:].all() and np.all(np.diff(organs[:, 4]) <= 0)


def test_a_structure_joined_to_a_network_larger_than_any_organ_is_split_out(monkeypatch):
    """A lattice of thin strands 40 units above the tissue (one structure above 20 units, larger
    than MAX_MM, as the folds of a brain or touching vessels make) with a lesion 300 units above
    it on one strand: thresholded again at higher levels, the lesion is a structure of its own,
    found by a split. Without the split (``proposals-v2``) it went with the network."""
    n = 300  # 1 mm pixels
    rows, cols = np.mgrid[:n, :n]
    residue = np.zeros((n, n), np.float32)
    residue[((rows % 8 < 2) | (cols % 8 < 2)) & (np.hypot(rows - 150, cols - 150) < 110)] = 40.0
    residue[np.hypot(rows - 150.5, cols - 150.5) < 7] = 300.0
    truth = np.array([[144, 144, 13, 13]])
    found = region_proposals._structures(residue, 1.0)
    overlap = box_iou(truth, found[:, :4])[0]
    assert overlap.max() > 0.7 and found[np.argmax(overlap), 5] > 0  # found by a split
    assert not (np.maximum(found[:, 2], found[:, 3]) > region_proposals.MAX_MM).any()
    monkeypatch.setattr(region_proposals, "SPLIT", 1e9)
    unsplit = region_proposals._structures(residue, 1.0)
    assert len(unsplit) == 0 or box_iou(truth, unsplit[:, :4]).max() < 0.3


@pytest.mark.parametrize("spacing", [0.7, 1.0, 1.4])
def test_a_whole_organ_is_proposed_at_any_field_of_view(spacing):
    """A 180 mm liver (larger than the largest top-hat, and holding vessels and lesions) is one
    region, whatever the pixel size: a whole-organ box has an organ-sized region to match."""
    item = abdomen(spacing, lesions=("cyst", "hyper"))
    image = region_image(item)
    liver = np.array([[130 - 70, 170 - 60, 140, 120]]) / image.mm  # the liver's box in mm, on the grid
    found = propose(image)
    assert box_iou(liver, found).max() > 0.8


def test_snap_replaces_a_loose_box_by_the_structure():
    item = abdomen(1.0)
    x, y, w, h = stored_box(*LESIONS["cyst"], 1.0)
    loose = (x - 6, y - 4, w + 12, h + 10)
    _, snapped = describe_query(item, loose, snap=True)
    assert box_iou(np.array([snapped]), np.array([(x, y, w, h)]))[0, 0] > 0.6
    _, kept = describe_query(item, loose)
    assert kept == loose


def test_boxes_and_masks_are_checked(tmp_path):
    assert parse_box("10, 20,30,40") == (10, 20, 30, 40)
    for bad in ("1,2,3", "a,b,c,d"):
        with pytest.raises(ConfigError, match="X,Y,W,H"):
            parse_box(bad)
    with pytest.raises(ConfigError, match="empty"):
        check_box((0, 0, 0, 5), (64, 64))
    with pytest.raises(ConfigError, match="outside the query image"):
        check_box((60, 0, 10, 5), (64, 64))
    mask = np.zeros((64, 48), bool)
    mask[10:20, 5:9] = True
    np.save(tmp_path / "m.npy", mask)
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert mask_box(tmp_path / "m.npy", (64, 48)) == mask_box(tmp_path / "m.png", (64, 48)) == (5, 10, 4, 10)
    with pytest.raises(ConfigError, match="query image is"):
        mask_box(mask, (32, 32))
    with pytest.raises(ConfigError, match="empty"):
        mask_box(np.zeros((64, 48)), (64, 48))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read"):
        mask_box(tmp_path / "bad.png", (64, 48))


def test_the_decode_wrapper_travels_to_workers_and_adds_regions():
    wrapper = pickle.loads(pickle.dumps(WithRegions(Preprocessing(size=64), limit=8)))
    item = abdomen(1.0)
    assert wrapper.apply(item).shape == (1, 64, 64) and wrapper.size == 64
    regions = wrapper.extras(item)["regions"]
    assert 0 < len(regions) <= region_proposals.most_regions(8) and regions.descriptors.shape[1] == region_descriptor.DIM


def test_every_part_of_a_structure_counts_by_its_area():
    """A disc whose outer half-radius is bright: the descriptor's inside band fractions are the
    bright part's *area* share (three quarters of the disc), not its share of the radius (a half),
    which an unweighted polar grid would give."""
    spacing, n = 1.0, 200
    image = np.full((n, n), 40.0, np.float32)
    image[ellipse((n, n), (100, 100), (90, 90), spacing)] = 60.0  # an organ around the structure
    image[ellipse((n, n), (100, 100), (20, 20), spacing)] = 260.0  # the structure's outer half: +200
    image[ellipse((n, n), (100, 100), (10, 10), spacing)] = 60.0  # its inner half: as the organ
    meta = ItemMeta(sop_instance_uid="1.2.3", modality="CT", pixel_spacing=(spacing, spacing), rows=n, cols=n)
    image_grid = region_image(Item(meta=meta, pixels=image))
    box = np.array([[80.0, 80.0, 40.0, 40.0]]) * image_grid.scale[1]
    d = region_descriptor._describe(image_grid, box)[0]
    bands = d[14:19]  # fractions of the inside < -100, -100..-30, -30..30, 30..100, > 100 units from the far ring
    assert bands[4] == pytest.approx(0.75, abs=0.08)
    assert bands[2] == pytest.approx(0.25, abs=0.08)


def test_weighted_percentiles_follow_the_weights():
    values = np.array([[0.0, 1.0, 2.0, 3.0]])
    even = region_descriptor._weighted_percentiles(values, np.full(4, 0.25), (0.5,))
    assert even[0, 0] == pytest.approx(np.percentile(values, 50), abs=0.51)
    heavy_top = region_descriptor._weighted_percentiles(values, np.array([0.05, 0.05, 0.1, 0.8]), (0.1, 0.5))
    assert 2.5 < heavy_top[0, 1] <= 3.0  # most of the mass sits on 3: the median lies near it
    assert heavy_top[0, 0] < heavy_top[0, 1]


def test_an_item_whose_regions_fail_is_still_indexed_and_says_why(monkeypatch, caplog):
    """A degenerate frame quietly has no regions; a failure inside region extraction (forced here by
    making the proposal step raise, as a defect on some unforeseen image would) leaves the item
    without regions and logs one warning naming it, instead of failing its file or staying silent."""
    wrapper = WithRegions(Preprocessing(size=64), limit=8)
    thin = Item(meta=ItemMeta(sop_instance_uid="1.2.9", modality="CT", pixel_spacing=(1.0, 1.0), rows=1, cols=64),
                pixels=np.zeros((1, 64), np.float32))
    with caplog.at_level("WARNING", logger="medcbir.encoders.regions"):
        assert len(wrapper.extras(thin)["regions"]) == 0
        assert not caplog.records

        def broken(*args, **kwargs):
            raise ValueError("cannot propose on this frame")

        monkeypatch.setattr(region_proposals, "propose", broken)
        item = abdomen(1.0)
        assert len(wrapper.extras(item)["regions"]) == 0
    assert len(caplog.records) == 1 and "1.2.3" in caplog.text and "cannot propose" in caplog.text
