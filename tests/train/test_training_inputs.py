"""The trainer sees, item by item, exactly the input search gives the encoder.

A hand-made archive mixes what a hospital archive holds: CT with a table, MR with and without a
VOI window, a MONOCHROME1 image, non-square images, two patients. For every item, the trainer's
un-augmented view (cache → per-item windows) must equal ``Preprocessing.apply`` of that item.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.uid import MRImageStorage

from medcbir.imaging import read_dicom
from medcbir.encoders.preprocessing import default_preprocessing
from medcbir.train.dataset import load_hu_dataset, patient_split
from medcbir.train.views import make_views, parse_views
from tests.imaging.dicomfiles import _base, ct_dataset, save


def _disc(h, w, centre, radius, inside, outside, rng, noise=5.0):
    yy, xx = np.mgrid[:h, :w]
    img = np.where(np.hypot(yy - centre[0], xx - centre[1]) < radius, inside, outside).astype(np.float64)
    return img + rng.normal(0, noise, size=(h, w))


def _mr(pixels, *, photometric="MONOCHROME2", voi=None, patient="P-MR"):
    ds = _base(MRImageStorage, "MR", "1.2.840.10008.1.2.1")
    ds.PatientID = patient
    arr = np.clip(np.round(pixels), 0, 65535).astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.9, 0.9]
    if voi is not None:
        ds.WindowCenter, ds.WindowWidth = voi
    ds.PixelData = arr.tobytes()
    return ds


@pytest.fixture(scope="module")
def mixed_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for i in range(3):  # CT, non-square, a body and a table below it, patient P-CT
        hu = _disc(80, 96, (36 + i, 48), 26 + 2 * i, 40.0, -1000.0, rng)
        hu[70:74, 8:88] = 200.0  # the table
        ds = ct_dataset(hu, position=float(i * 5), instance=i + 1)
        ds.PatientID = "P-CT"
        save(ds, root / f"ct/{i}.dcm")
    save(_mr(_disc(64, 88, (30, 44), 22, 900.0, 20.0, rng), voi=(600, 1000)), root / "mr/voi.dcm")
    save(_mr(_disc(72, 56, (36, 28), 20, 3000.0, 50.0, rng, noise=40)), root / "mr/novoi.dcm")
    save(_mr(_disc(48, 64, (24, 30), 15, 1500.0, 4000.0, rng, noise=20), photometric="MONOCHROME1"), root / "mr/mono1.dcm")
    save(_mr(_disc(64, 64, (32, 32), 20, 800.0, 10.0, rng), patient="P-MR2"), root / "mr/other.dcm")
    return root


def _views_equal_apply(archive, prep):
    data = load_hu_dataset(archive, prep, workers=1)
    [test_time] = [(w,) for w in prep.windows]  # one channel
    views = make_views(data.pixels(), [data.ranges(test_time)], None, data.inverted)[0]
    checked = 0
    for path in sorted(archive.rglob("*.dcm")):
        item = read_dicom(path)[0]
        rows = np.flatnonzero(data.sop_instance_uid == item.meta.sop_instance_uid)
        if not len(rows):
            continue
        expected = prep.apply(item)
        # float16 storage of modality units: within 2e-3 after any window used here.
        np.testing.assert_allclose(views[rows[0]].numpy(), expected, atol=2e-3, err_msg=str(path))
        checked += 1
    return data, checked


def test_each_training_view_equals_the_search_time_input(mixed_archive):
    prep = default_preprocessing(48)
    data, checked = _views_equal_apply(mixed_archive, prep)
    assert checked == len(data) == 7  # CT ×3, MR with VOI, MR without, MONOCHROME1, second MR patient
    assert set(c.modality for c in data.contexts) == {"CT", "MR"}


def test_a_view_does_not_depend_on_the_rest_of_the_batch(mixed_archive):
    """Batched windowing used batch percentiles before: one item alone and in a batch must agree."""
    prep = default_preprocessing(48, windows=("*=auto",))
    data = load_hu_dataset(mixed_archive, prep, workers=1)
    ranges = data.ranges(prep.windows)
    together = make_views(data.pixels(), [ranges], None, data.inverted)[0]
    for i in range(len(data)):
        alone = make_views(data.pixels()[i : i + 1], [ranges[i : i + 1]], None, data.inverted[i : i + 1])[0]
        assert torch.equal(alone[0], together[i])


def test_whole_image_recipe_and_monochrome1_padding_stay_dark(mixed_archive):
    """Non-square MONOCHROME1 padded with what is dark after inversion."""
    from medcbir.imaging import Preprocessing

    prep = Preprocessing(("*=robust",), 48)  # no crop: 48×64 is padded top and bottom
    data, checked = _views_equal_apply(mixed_archive, prep)
    assert checked == 7
    item = read_dicom(mixed_archive / "mr/mono1.dcm")[0]
    image = prep.apply(item)[0]
    assert image[:3].max() == 0.0 and image[-3:].max() == 0.0  # padding rows: black
    assert image[24].max() > 0.5  # the (inverted) picture is bright somewhere


def test_a_ct_only_encoder_leaves_other_modalities_out(mixed_archive):
    from medcbir.imaging import Preprocessing

    prep = Preprocessing(("ct-liver-wide",), 48, crop="body")  # a pre-policy, CT-only record
    data = load_hu_dataset(mixed_archive, prep, workers=1)
    assert len(data) == 3 and set(c.modality for c in data.contexts) == {"CT"}
    assert data.skipped == {"modality-mismatch": 4}


def test_hu_views_change_the_ct_window_only(mixed_archive):
    prep = default_preprocessing(48)
    narrow, wide = parse_views("hu-narrow,hu-wide", prep.windows)
    assert narrow == ("CT=ct-liver-narrow,*=robust",) and wide == ("CT=ct-liver-wide,*=robust",)
    data = load_hu_dataset(mixed_archive, prep, workers=1)
    a, b = make_views(data.pixels(), [data.ranges(narrow), data.ranges(wide)], None, data.inverted)
    is_ct = np.array([c.modality == "CT" for c in data.contexts])
    assert not torch.allclose(a[is_ct], b[is_ct])
    assert torch.equal(a[~is_ct], b[~is_ct])


def test_held_out_patients_depend_on_the_seed_only(mixed_archive):
    """Two cache builds use two random pseudonym keys; the split must not change (item 8)."""
    prep = default_preprocessing(48)
    first = load_hu_dataset(mixed_archive, prep, workers=1)
    second = load_hu_dataset(mixed_archive, prep, workers=1)
    assert set(first.patient) != set(second.patient)  # fresh keys, other pseudonyms
    for seed in range(4):
        a = patient_split(first.patient, 0.34, seed)
        b = patient_split(second.patient, 0.34, seed)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    splits = {tuple(patient_split(first.patient, 0.34, s)[1]) for s in range(8)}
    assert len(splits) > 1  # and the seed does choose
