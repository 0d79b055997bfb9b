"""Preprocessing by modality, body cropping and physical scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medcbir.errors import ConfigError
from medcbir.imaging import Item, ItemMeta, Preprocessing, SkipFile, read_dicom
from medcbir.imaging.policy import WindowPolicy
from medcbir.imaging.windows import foreground_range


def test_policy_parsing_and_legacy_records():
    p = WindowPolicy.parse("CT=ct-liver-wide,*=robust")
    assert p.window_for("CT") == "ct-liver-wide" and p.window_for("mr") == "robust" and p.window_for("") == "robust"
    assert str(p) == "CT=ct-liver-wide,*=robust"
    legacy = WindowPolicy.parse("ct-liver-wide")  # a checkpoint from before policies
    assert legacy.window_for("CT") == "ct-liver-wide" and legacy.window_for("MR") is None
    assert legacy.record() == "ct-liver-wide"
    assert WindowPolicy.parse("auto").window_for("US") == "auto"
    assert WindowPolicy.parse("MR=100:900").window_for("MR") == (100.0, 900.0)
    for bad in ("CT=nope", "CT=ct-lung,CT=ct-bone", "=robust", "CT=5:1"):
        with pytest.raises(ConfigError):
            WindowPolicy.parse(bad)
    # A legacy record keeps its exact dict (so old fingerprints do not move).
    old = {"windows": ["ct-liver-wide"], "size": 224}
    assert Preprocessing.from_dict(old).to_dict() == old


def _item(pixels, modality="CT", spacing=(0.8, 0.8), voi=None, inverted=False):
    pixels = np.asarray(pixels, dtype=np.float32)
    meta = ItemMeta(sop_instance_uid="1.2.3", modality=modality, rows=pixels.shape[0], cols=pixels.shape[1], pixel_spacing=spacing)
    return Item(meta=meta, pixels=pixels, voi=voi, inverted=inverted)


def test_robust_normalisation_ignores_background_scale_and_offset():
    rng = np.random.default_rng(0)
    img = rng.normal(5, 2, (64, 64))
    img[16:48, 16:48] = rng.normal(800, 50, (32, 32))
    lo, hi = foreground_range(img)
    assert 600 < lo < 800 < hi < 1000  # the foreground's range, not the background's
    lo2, hi2 = foreground_range(3.0 * img + 100.0)
    assert lo2 == pytest.approx(3 * lo + 100, rel=1e-4) and hi2 == pytest.approx(3 * hi + 100, rel=1e-4)
    prep = Preprocessing(("CT=ct-liver-wide,*=robust",), 32)
    a = prep.apply(_item(img, "MR"))
    b = prep.apply(_item(3.0 * img + 100.0, "MR"))  # another scanner's intensity scale
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_ct_only_policy_skips_other_modalities():
    prep = Preprocessing(("ct-liver-wide",), 32)
    with pytest.raises(SkipFile) as info:
        prep.apply(_item(np.zeros((8, 8)), "MR"))
    assert info.value.reason == "modality-mismatch"
    assert prep.apply(_item(np.zeros((8, 8)), "CT")).shape == (1, 32, 32)


def _body(size=256, radius=90, centre=None, spacing=0.8, seed=0):
    """A CT slice: a body (soft tissue, an 'organ', a 'spine') in air, with a table below."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = centre or (size / 2, size / 2)
    hu = np.full((size, size), -1000.0, np.float32)
    body = (yy - cy) ** 2 / (0.8 * radius) ** 2 + (xx - cx) ** 2 / radius**2 < 1
    hu[body] = 40.0
    hu[body & ((yy - cy + 20) ** 2 + (xx - cx - 30) ** 2 < 35**2)] = 120.0
    hu[body & ((yy - cy - 40) ** 2 + (xx - cx) ** 2 < 14**2)] = 700.0
    table = int(cy + 0.8 * radius + 10)
    if table + 6 < size:
        hu[table : table + 6, 10:-10] = 100.0
    return hu + rng.normal(0, 10, hu.shape).astype(np.float32)


def _reframed(hu, spacing, new_spacing, offset, size=256):
    """The same anatomy scanned with another field of view (pixel spacing) and patient offset."""
    zoomed = ndimage.zoom(hu, spacing / new_spacing, order=1)
    out = np.full((size, size), -1000.0, np.float32)
    h, w = zoomed.shape
    top, left = (size - h) // 2 + offset[0], (size - w) // 2 + offset[1]
    ys, xs = max(0, top), max(0, left)
    ye, xe = min(size, top + h), min(size, left + w)
    out[ys:ye, xs:xe] = zoomed[ys - top : ye - top, xs - left : xe - left]
    return out


def test_another_field_of_view_and_offset_embed_alike_with_cropping():
    from medcbir.encoders.module import new_encoder_module, thumbnail_encoder_module
    from medcbir.encoders.preprocessing import default_preprocessing
    from medcbir.encoders.architecture import DEFAULT_POOLING

    hu = _body()
    moved = _reframed(hu, 0.8, 1.1, (30, -25))  # 0.8 → 1.1 mm/px (a larger FOV), shifted
    other_level = _body(radius=70, seed=3)
    other_level[100:140, 60:200] = -900  # lungs: another anatomical level
    on = default_preprocessing(128)
    off = Preprocessing(on.windows, 128)
    assert on.crop == "body" and off.crop == "none"

    def cos(enc, prep, a, b, sa=0.8, sb=1.1):
        import torch

        x = np.stack([prep.apply(_item(a, spacing=(sa, sa))), prep.apply(_item(b, spacing=(sb, sb)))])
        with torch.no_grad():
            e = enc(torch.from_numpy(x)).numpy()
        return float(e[0] @ e[1])

    for make in (lambda p: new_encoder_module("resnet18", p, seed=0, pooling=DEFAULT_POOLING), lambda p: thumbnail_encoder_module(16, p)):
        enc_on, enc_off = make(on), make(off)
        same_on, same_off = cos(enc_on, on, hu, moved), cos(enc_off, off, hu, moved)
        assert same_on >= 0.95, same_on
        assert same_off < same_on
        # Not a collinear encoder: another level is further away than the reframed same slice.
        assert cos(enc_on, on, hu, other_level, 0.8, 0.8) < same_on
    thumb_on = cos(thumbnail_encoder_module(16, on), on, hu, moved)
    thumb_off = cos(thumbnail_encoder_module(16, off), off, hu, moved)
    assert thumb_on > 0.98 and thumb_off < 0.9


def test_physical_scale_keeps_size_differences_that_box_cropping_removes():
    small, large = _body(radius=60), _body(radius=100)
    box = Preprocessing(("ct-liver-wide",), 64, crop="body")
    scaled = Preprocessing(("ct-liver-wide",), 64, crop="body", spacing=4.0)  # 256 mm across
    def area(prep, hu):
        return float((prep.apply(_item(hu))[0] > 0.2).mean())

    assert abs(area(box, small) - area(box, large)) < 0.1  # fitted: the same fraction of the input
    assert area(scaled, large) > 1.8 * area(scaled, small)  # real size kept


def test_mr_file_with_ct_only_encoder_is_skipped_and_indexed_with_the_default(tmp_path, capsys):
    from medcbir.cli.main import main
    from tests.train.test_training_inputs import _disc, _mr
    from tests.imaging.dicomfiles import save

    rng = np.random.default_rng(0)
    archive = tmp_path / "mr"
    ramp = np.linspace(500, 1300, 64)[None, :]  # tissue contrast inside the body
    for i in range(3):
        save(_mr(_disc(64, 64, (32, 32), 18 + i, 1.0, 0.0, rng, noise=0.0) * ramp + 10), archive / f"{i}.dcm")
    code = main(["index", str(archive), "--encoder", "default-v1", "--out", str(tmp_path / "ct-only"), "--workers", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 0 and summary["skipped"] == {"modality-mismatch": 3}
    # scan counts it too, for a given encoder (and decodes the files fine without one)
    code = main(["scan", str(archive), "--encoder", "default-v1", "--workers", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["skipped"] == {"modality-mismatch": 3}
    code = main(["scan", str(archive), "--workers", "1", "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out)["skipped"] == {} and json.loads(out)["items"] == 3
    code = main(["index", str(archive), "--out", str(tmp_path / "default"), "--workers", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["indexed"] == 3
    # ... with the MR normalisation: the robust window of the item, not a CT window.
    from medcbir.encoders.preprocessing import default_preprocessing

    from medcbir.imaging.preprocess import WindowContext

    item = read_dicom(archive / "0.dcm")[0]
    prep = default_preprocessing()
    image = prep.apply(item)[0]
    lo, hi = WindowContext.of(item).range("robust")
    np.testing.assert_allclose(image, np.clip((prep.geometry(item) - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert 500 <= lo < hi <= 1300  # the body's intensities, not Hounsfield units
    body = prep.geometry(item) > 100
    assert np.mean((image[body] > 0) & (image[body] < 1)) > 0.8  # contrast kept inside the body
    ct_window = np.clip((prep.geometry(item) + 200) / 500, 0, 1)  # what the 0.1 default did to MR
    assert np.mean(ct_window[body] == 1.0) > 0.9


def test_a_checkpoint_from_before_policies_still_opens(tmp_path):
    """A 0.1 checkpoint (bare CT window, no crop): same record, same fingerprint, CT-only policy."""
    import torch

    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module
    from medcbir.encoders.runtime import load_encoder_module

    old = new_encoder_module("resnet18", {"windows": ["ct-liver-wide"], "size": 64}, seed=1)
    path = save_checkpoint(tmp_path / "old.pt", old)
    record = torch.load(path, weights_only=True)
    assert record["preprocessing"] == {"windows": ["ct-liver-wide"], "size": 64}
    again = load_encoder_module(path)
    assert again.fingerprint == old.fingerprint == record["fingerprint"]
    assert again.preprocessing.policies[0].window_for("CT") == "ct-liver-wide"
    assert again.preprocessing.policies[0].window_for("MR") is None
