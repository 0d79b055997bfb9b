"""Windows and the resize-then-window preprocessing, on hand-made arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from medcbir.errors import ConfigError
from medcbir.imaging import WINDOWS, Item, ItemMeta, Preprocessing, apply_window, resize_keep_aspect, voi_range, window_range


def item_of(pixels, voi=None, inverted=False, modality="CT") -> Item:
    pixels = np.asarray(pixels, dtype=np.float32)
    meta = ItemMeta(sop_instance_uid="1.2.3", modality=modality, rows=pixels.shape[0], cols=pixels.shape[1])
    return Item(meta=meta, pixels=pixels, voi=voi, inverted=inverted)


def test_named_windows_are_the_documented_ranges():
    assert WINDOWS["ct-liver-wide"] == (-200.0, 300.0)
    assert WINDOWS["ct-liver-narrow"] == (50.0, 150.0)
    for name in ("ct-abdomen", "ct-lung", "ct-bone", "ct-brain"):
        lo, hi = WINDOWS[name]
        assert lo < hi
    assert WINDOWS["ct-lung"][0] < -1000 + 200 and WINDOWS["ct-bone"][1] > 1000


def test_apply_window_linear_and_clipped_numpy_and_torch():
    hu = np.array([[-1000.0, -200.0, 50.0], [175.0, 300.0, 3000.0]], dtype=np.float32)
    expected = np.array([[0.0, 0.0, 0.5], [0.75, 1.0, 1.0]], dtype=np.float32)
    out = apply_window(hu, "ct-liver-wide")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-7)
    np.testing.assert_allclose(apply_window(hu, (50, 150)), [[0, 0, 0], [1, 1, 1]], atol=1e-7)
    assert apply_window(np.array([100.0]), "ct-liver-narrow")[0] == pytest.approx(0.5)
    batch = torch.from_numpy(np.stack([hu, hu]))[:, None]  # B×1×H×W, as the trainer uses it
    out_t = apply_window(batch, "ct-liver-wide")
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32 and out_t.shape == batch.shape
    np.testing.assert_allclose(out_t[1, 0].numpy(), expected, atol=1e-7)
    assert batch.min() == -1000.0  # the input is not modified in place


def test_voi_window_matches_pydicom_apply_windowing():
    """Our 'voi' window is DICOM's linear VOI function: compare with pydicom's own implementation."""
    from pydicom.pixels import apply_voi_lut

    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    ds.VOILUTFunction = "LINEAR"
    values = np.arange(-400, 500, 7, dtype=np.float64).reshape(1, -1)
    theirs = apply_voi_lut(values.copy(), ds)
    y_min, y_max = -(2**15), 2**15 - 1
    theirs01 = (theirs - y_min) / (y_max - y_min)
    ours = apply_window(values, "voi", item_of(values, voi=(40.0, 400.0)))
    np.testing.assert_allclose(ours, theirs01, atol=1e-4)
    assert voi_range(40, 400) == (-160.0, 239.0)


def test_auto_window_uses_voi_else_percentiles():
    rng = np.random.default_rng(0)
    pixels = rng.normal(1000, 100, size=(64, 64)).astype(np.float32)
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    assert window_range("auto", pixels) == pytest.approx((lo, hi))
    assert window_range("auto", item=item_of(pixels, voi=(1000, 201))) == (899.5, 1099.5)  # DICOM: c - 0.5 ± (w - 1) / 2
    # percentiles come from the item's own pixels, not from padding added by a resize
    resized = resize_keep_aspect(pixels[:, :16], 64, fill=-5000.0)
    assert window_range("auto", resized, item_of(pixels)) == pytest.approx((lo, hi))
    flat = np.full((4, 4), 7.0)
    assert apply_window(flat, "auto").max() == 0.0  # a flat image is well-defined, not NaN


def test_bad_windows_are_config_errors():
    for window in ("ct-liver-huge", (10, 10), (5, 1), ("a", "b"), 3):
        with pytest.raises(ConfigError):
            apply_window(np.zeros(2), window)
    with pytest.raises(ConfigError):
        Preprocessing(windows=("nope",))
    with pytest.raises(ConfigError):
        Preprocessing(size=0)


def test_resize_keeps_aspect_and_pads_with_minimum():
    image = np.full((32, 64), 100.0, dtype=np.float32)
    image[0, 0] = -1000.0
    out = resize_keep_aspect(image, 128)
    assert out.shape == (128, 128) and out.dtype == np.float32
    # content is 64 rows × 128 cols, centred vertically; the padding is the image minimum
    assert np.all(out[:32] == -1000.0) and np.all(out[96:] == -1000.0)
    assert np.allclose(out[40:90, 10:120], 100.0)
    tall = resize_keep_aspect(np.ones((40, 10), np.float32), 20, fill=0.0)
    assert np.all(tall[:, 7:12] == 1.0) and np.all(tall[:, :7] == 0.0) and np.all(tall[:, 12:] == 0.0)


def test_resize_of_a_linear_ramp_stays_linear():
    """Bilinear resampling reproduces a linear function inside the image (independent check)."""
    ramp = np.tile(np.arange(64, dtype=np.float32) * 10.0, (64, 1))
    out = resize_keep_aspect(ramp, 32)
    centres = (np.arange(32) + 0.5) * 2 - 0.5  # source coordinate of each output pixel centre
    np.testing.assert_allclose(out[16, 2:-2], centres[2:-2] * 10.0, atol=1e-3)
    same = resize_keep_aspect(ramp, 64)
    np.testing.assert_array_equal(same, ramp)


def test_preprocessing_apply_is_resize_then_window_then_invert():
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1000, 1000, size=(48, 32)).astype(np.float32)
    prep = Preprocessing(windows=("ct-liver-wide", "ct-lung", (0, 100)), size=64)
    assert prep.channels == 3
    out = prep.apply(item_of(hu))
    assert out.shape == (3, 64, 64) and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    resized = prep.resize(hu)
    np.testing.assert_array_equal(out[0], apply_window(resized, "ct-liver-wide"))
    np.testing.assert_array_equal(out[1], apply_window(resized, (-1350, 150)))
    np.testing.assert_array_equal(out[2], apply_window(resized, (0, 100)))
    inverted = prep.apply(item_of(hu, inverted=True))
    # 48×32 -> 64×43: the picture is inverted, the padding stays dark (MONOCHROME1 pads with
    # its maximum, which is black after inversion).
    cols = np.flatnonzero((resized != resized.min()).any(axis=0))
    left, right = cols.min() + 1, cols.max()
    np.testing.assert_allclose(inverted[:, :, left:right], 1.0 - out[:, :, left:right], atol=1e-6)
    assert inverted[:, :, 0].max() == 0.0 and inverted[:, :, -1].max() == 0.0


def test_preprocessing_round_trips_through_dict():
    prep = Preprocessing(windows=("ct-liver-narrow", (-100, 200), "auto"), size=96)
    data = prep.to_dict()
    import json

    again = Preprocessing.from_dict(json.loads(json.dumps(data)))
    assert again == prep and hash(again) == hash(prep)
    assert Preprocessing() == Preprocessing(windows=("ct-liver-wide",), size=224)
    with pytest.raises(ConfigError):
        Preprocessing.from_dict({"size": 3})
