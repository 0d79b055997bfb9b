"""read_dicom on real files written by pydicom: HU through every representation, colour,
MONOCHROME1, multi-frame, metadata and the skip reasons of bad files."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from medcbir.errors import DecodeError
from medcbir.imaging import Item, ItemMeta, Preprocessing, SkipFile, pseudonym, read_dicom

from .dicomfiles import (
    PATIENT_ID,
    PATIENT_NAME,
    ct_dataset,
    enhanced_ct,
    hu_phantom,
    mr_monochrome1,
    rgb_dataset,
    save,
    document_dataset,
    with_transfer_syntax_bytes,
)

KEY = bytes(range(32))

REPRESENTATIONS = [
    # intercept, signed, bits stored, transfer syntax
    (-1024.0, False, 16, ExplicitVRLittleEndian),
    (-1024.0, False, 12, ImplicitVRLittleEndian),
    (0.0, True, 16, ExplicitVRLittleEndian),
    (0.0, True, 12, ImplicitVRLittleEndian),
    (-1024.0, True, 16, DeflatedExplicitVRLittleEndian),
    (-1024.0, False, 16, RLELossless),
    (0.0, True, 16, JPEG2000Lossless),
    (-1024.0, False, 12, JPEG2000Lossless),
]


@pytest.mark.parametrize(("intercept", "signed", "bits", "tsyntax"), REPRESENTATIONS)
def test_ct_hounsfield_units_same_for_every_representation(tmp_path, intercept, signed, bits, tsyntax):
    hu = hu_phantom(32)
    path = save(ct_dataset(hu, intercept=intercept, signed=signed, bits_stored=bits, tsyntax=tsyntax), tmp_path / "ct.dcm")
    (item,) = read_dicom(path, key=KEY)
    assert item.pixels.dtype == np.float32 and item.pixels.shape == (32, 32)
    np.testing.assert_array_equal(item.pixels, hu.astype(np.float32))
    assert item.meta.transfer_syntax == tsyntax
    assert item.voi == (40.0, 400.0)
    assert item.inverted is False


def test_rescale_slope_is_applied(tmp_path):
    hu = hu_phantom(16) // 2 * 2  # even, so slope 2 stores it exactly
    path = save(ct_dataset(hu, intercept=-2048.0, slope=2.0), tmp_path / "ct.dcm")
    (item,) = read_dicom(path)
    np.testing.assert_array_equal(item.pixels, hu.astype(np.float32))


def test_metadata_fields_and_pseudonym(tmp_path):
    ds = ct_dataset(hu_phantom(32), position=-42.25, instance=13)
    path = save(ds, tmp_path / "any name without extension")
    (item,) = read_dicom(path, key=KEY)
    meta = item.meta
    assert isinstance(meta, ItemMeta)
    assert list(meta.to_dict()) == list(ItemMeta.COLUMNS)
    assert meta.sop_instance_uid == ds.SOPInstanceUID
    assert meta.series_instance_uid == ds.SeriesInstanceUID
    assert meta.study_instance_uid == ds.StudyInstanceUID
    assert (meta.frame, meta.modality, meta.body_part, meta.instance_number) == (0, "CT", "ABDOMEN", 13)
    assert meta.slice_position == pytest.approx(-42.25)
    assert (meta.rows, meta.cols) == (32, 32)
    assert meta.pixel_spacing == pytest.approx((0.7, 0.8))
    assert meta.source == str(path)
    assert meta.patient_pseudonym == pseudonym(PATIENT_ID, KEY) and len(meta.patient_pseudonym) == 32
    text = repr(meta) + repr(meta.to_dict())
    assert PATIENT_ID not in text and "Doe" not in text
    assert ItemMeta.from_dict(meta.to_dict()) == meta
    # without a key there is no pseudonym at all
    (item,) = read_dicom(path)
    assert item.meta.patient_pseudonym == ""


def test_missing_optional_tags_give_documented_defaults(tmp_path):
    ds = ct_dataset(hu_phantom(16))
    for keyword in ("ImagePositionPatient", "PixelSpacing", "InstanceNumber", "BodyPartExamined", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    (item,) = read_dicom(save(ds, tmp_path / "ct.dcm"))
    assert math.isnan(item.meta.slice_position)
    assert all(math.isnan(v) for v in item.meta.pixel_spacing)
    assert item.meta.instance_number == -1 and item.meta.body_part == "" and item.voi is None


def test_binary_stream_and_uri(tmp_path):
    path = save(ct_dataset(hu_phantom(16)), tmp_path / "ct.dcm")
    (item,) = read_dicom(io.BytesIO(path.read_bytes()), uri="dicomweb://x/y")
    assert item.meta.source == "dicomweb://x/y"


def test_monochrome1_is_flagged_and_inverted_after_windowing(tmp_path):
    ds = mr_monochrome1(24)
    (item,) = read_dicom(save(ds, tmp_path / "mr.dcm"))
    raw = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(24, 24).astype(np.float32)
    np.testing.assert_array_equal(item.pixels, raw)  # pixels keep their values
    assert item.inverted is True and item.voi == (500.0, 800.0)
    image = Preprocessing(windows=("voi",), size=24).apply(item)[0]
    lo, hi = 500 - 0.5 - 799 / 2, 500 - 0.5 + 799 / 2
    expected = 1.0 - np.clip((raw - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[raw <= lo].min() == 1.0  # low values are bright on MONOCHROME1


def test_rgb_becomes_bt601_luma(tmp_path):
    ds, arr = rgb_dataset(16)
    (item,) = read_dicom(save(ds, tmp_path / "rgb.dcm"))
    expected = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    np.testing.assert_allclose(item.pixels, expected, rtol=1e-6, atol=1e-4)
    assert item.voi is None and item.inverted is False


def test_multiframe_gives_one_item_per_frame_with_functional_groups(tmp_path):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 3000, size=(3, 8, 10))
    intercepts = [-1024.0, -1000.0, 0.0]
    (a, b, c) = read_dicom(save(enhanced_ct(frames, intercepts), tmp_path / "mf.dcm"))
    for index, item in enumerate((a, b, c)):
        assert item.meta.frame == index and (item.meta.rows, item.meta.cols) == (8, 10)
        np.testing.assert_array_equal(item.pixels, (frames[index] + intercepts[index]).astype(np.float32))
        assert item.meta.slice_position == pytest.approx(10.0 * index)
        assert item.meta.pixel_spacing == pytest.approx((0.5, 0.5))
    assert len({item.meta.sop_instance_uid for item in (a, b, c)}) == 1


# --- files that must be skipped, with the right reason ---------------------------------------


def expect_skip(path_or_stream, reason: str) -> SkipFile:
    with pytest.raises(SkipFile) as info:
        read_dicom(path_or_stream)
    assert info.value.reason == reason, info.value.detail
    assert isinstance(info.value, DecodeError)
    return info.value


def test_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("patient list\n" * 20)
    expect_skip(path, "not-dicom")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    expect_skip(empty, "not-dicom")


def test_rt_plan_has_no_pixel_data(tmp_path):
    # (an SR is skipped earlier, as not-an-image: tests/imaging/test_not_an_image.py)
    skip = expect_skip(save(document_dataset("1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN"), tmp_path / "plan.dcm"), "no-pixel-data")
    assert "RTPLAN" in skip.detail


def test_truncated_pixel_data(tmp_path):
    data = save(ct_dataset(hu_phantom(32)), tmp_path / "ct.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 300])
    expect_skip(cut, "truncated")


def test_bogus_transfer_syntax(tmp_path):
    data = save(ct_dataset(hu_phantom(16)), tmp_path / "ct.dcm").read_bytes()
    bogus = tmp_path / "bogus.dcm"
    bogus.write_bytes(with_transfer_syntax_bytes(data, ExplicitVRLittleEndian, "1.2.840.10008.1.2.9"))
    skip = expect_skip(bogus, "undecodable-syntax")
    assert "1.2.840.10008.1.2.9" in skip.detail


def test_huge_rows_columns_rejected_before_decoding(tmp_path):
    ds = ct_dataset(hu_phantom(16))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 200
    path = save(ds, tmp_path / "huge.dcm")
    expect_skip(path, "too-large")
    # the limit is a parameter; a small file over a small limit is refused too
    with pytest.raises(SkipFile) as info:
        read_dicom(save(ct_dataset(hu_phantom(16)), tmp_path / "ok.dcm"), max_pixels=100)
    assert info.value.reason == "too-large"


def test_decode_cost_is_judged_from_the_header(tmp_path):
    from medcbir.imaging.dicom import FRAME_COST_BYTES, MAX_DECODE_BYTES, decode_cost, read_dataset

    native = read_dataset(save(ct_dataset(hu_phantom(32)), tmp_path / "ct.dcm"))
    # 16-bit decoded, float32 items, the frame's own work
    assert decode_cost(native) == 32 * 32 * 2 + 32 * 32 * 4 + FRAME_COST_BYTES
    rle = read_dataset(save(ct_dataset(hu_phantom(32), tsyntax=RLELossless), tmp_path / "rle.dcm"))
    assert decode_cost(rle) == decode_cost(native) + len(rle.PixelData)  # + the compressed bytes read
    frames = read_dataset(save(enhanced_ct(np.stack([hu_phantom(8)] * 5) + 1024, [-1024.0] * 5), tmp_path / "mf.dcm"))
    assert decode_cost(frames) == 5 * decode_cost(frames, frames=1)
    assert MAX_DECODE_BYTES == 2**30
    # the bound is a parameter: over it, skipped before decoding
    with pytest.raises(SkipFile) as info:
        read_dicom(tmp_path / "ct.dcm", max_bytes=decode_cost(native) - 1)
    assert info.value.reason == "too-large" and "MiB" in info.value.detail
    assert len(read_dicom(tmp_path / "ct.dcm", max_bytes=decode_cost(native))) == 1


@pytest.mark.parametrize("bomb", ["rle_16384", "frames_300k"])
def test_decode_bombs_are_skipped_before_decoding(tmp_path, bomb):
    """A 16384² RLE image (8 MB, 1.5 GiB decoded as float32) and 300,000 frames of one pixel
    (600 KB) are skipped from their header at the default bound, by read_dicom, decode_bytes
    and the walk alike, instead of being decoded for seconds."""
    import time

    from medcbir.imaging import decode_bytes, walk
    from tests.pacs.hostile import many_frames, rle_bomb

    data = rle_bomb() if bomb == "rle_16384" else many_frames()
    path = tmp_path / "bomb.dcm"
    path.write_bytes(data)
    started = time.monotonic()
    expect_skip(path, "too-large")
    with pytest.raises(SkipFile) as info:
        decode_bytes(data, "orthanc://x", None, None)
    assert info.value.reason == "too-large"
    assert time.monotonic() - started < 5  # decoding them took 5-16 s
    save(ct_dataset(hu_phantom(16)), tmp_path / "ok.dcm")
    w = walk(tmp_path, workers=1)
    assert len(list(w)) == 1 and w.report.skipped == {"too-large": 1}


def test_unknown_photometric_interpretation(tmp_path):
    ds = ct_dataset(hu_phantom(16))
    ds.PhotometricInterpretation = "HSV"
    expect_skip(save(ds, tmp_path / "hsv.dcm"), "unsupported-image")


def test_dicomdir_is_skipped(tmp_path):
    from pydicom.data import get_testdata_file

    expect_skip(get_testdata_file("DICOMDIR"), "dicomdir")


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_skip_detail_never_quotes_the_patient(tmp_path):
    ds = ct_dataset(hu_phantom(16))
    ds.PhotometricInterpretation = f"X{PATIENT_ID}"[:16]  # an absurd value that ends up in the detail
    skip = expect_skip(save(ds, tmp_path / "x.dcm"), "unsupported-image")
    assert "PAT-SECRET" not in str(skip) and PATIENT_NAME not in str(skip)


def test_skipfile_pickles():
    import pickle

    skip = pickle.loads(pickle.dumps(SkipFile("timeout", "slow")))
    assert (skip.reason, skip.detail) == ("timeout", "slow")
    with pytest.raises(ValueError):
        SkipFile("no-such-reason")


def test_item_is_dataclass_with_documented_fields():
    item = Item(meta=ItemMeta(sop_instance_uid="1.2"), pixels=np.zeros((2, 2), np.float32))
    assert item.voi is None and item.inverted is False


def test_a_corrupt_jpeg2000_stream_is_skipped_not_fatal(tmp_path):
    # A mutated JPEG 2000 file from benchmarks/fuzz.py: GDCM's decoder aborts the whole process on
    # it (std::terminate), so GDCM is only a last resort; read in a child process, because the
    # failure this guards against kills the process that reads the file.
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parent / "data" / "j2k-gdcm-aborts.dcm"
    code = (
        "import sys\n"
        "from medcbir.imaging import SkipFile, read_dicom\n"
        "try:\n"
        f"    read_dicom({str(path)!r}, key=b'k' * 32)\n"
        "    print('decoded')\n"
        "except SkipFile as exc:\n"
        "    print('skipped', exc.reason)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.split() == ["skipped", "corrupt"], run.stdout
    from medcbir.imaging.dicom import decode_plugins

    j2k = "1.2.840.10008.1.2.4.90"
    assert decode_plugins(("gdcm", "pillow", "pylibjpeg"), j2k)[-1] != "gdcm"
    assert "gdcm" not in decode_plugins(("gdcm", "pillow", "pylibjpeg"), j2k)
    assert decode_plugins(("gdcm",), j2k) == ["gdcm"]  # the only decoder there is: still tried
    assert decode_plugins(("gdcm", "pylibjpeg"), "1.2.840.10008.1.2.5") == ["pylibjpeg"]
