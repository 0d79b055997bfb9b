"""pydicom's own bundled test files as a real corpus.

Every file pydicom itself decodes (``ds.pixel_array`` succeeds) must decode through medcbir to
the same pixels after the documented rules, computed here independently of medcbir:
colour (pydicom's RGB output, palette applied) → BT.601 luma; grayscale → modality LUT
(RescaleSlope/Intercept, per-frame functional groups, or a Modality LUT table).
Every other file must be skipped with a reason, never crash. Only files present locally are
used (no downloads).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from medcbir.imaging import SKIP_REASONS, SkipFile, read_dicom

FILES = sorted(p for p in get_testdata_files() if Path(p).is_file())
LUMA = np.array([0.299, 0.587, 0.114])


def _rescale(ds, index: int):
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return float(ds.RescaleSlope), float(ds.RescaleIntercept)
    for seq, pos in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(seq)
        if groups and len(groups) > pos and "PixelValueTransformationSequence" in groups[pos]:
            pvt = groups[pos].PixelValueTransformationSequence[0]
            if "RescaleSlope" in pvt:
                return float(pvt.RescaleSlope), float(pvt.RescaleIntercept)
    return 1.0, 0.0


def _modality_lut_table(ds, frame: np.ndarray) -> np.ndarray:
    item = ds.ModalityLUTSequence[0]
    entries, first, bits = item.LUTDescriptor
    entries = entries or 2**16
    raw = item.LUTData
    table = np.frombuffer(raw, dtype="<u2" if bits > 8 else "u1") if isinstance(raw, bytes) else np.asarray(raw)
    index = np.clip(frame.astype(np.int64) - first, 0, entries - 1)
    return table[index].astype(np.float64)


def oracle(ds) -> list[np.ndarray]:
    """The documented pixels per frame, computed from pydicom's own ``pixel_array``."""
    from pydicom.pixels import apply_color_lut

    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None]
    photometric = ds.PhotometricInterpretation
    out = []
    for index, frame in enumerate(arr):
        if photometric == "PALETTE COLOR":
            frame = apply_color_lut(frame, ds)
        if frame.ndim == 3:
            out.append(frame.astype(np.float64) @ LUMA)
        elif ds.get("ModalityLUTSequence"):
            out.append(_modality_lut_table(ds, frame))
        else:
            slope, intercept = _rescale(ds, index)
            out.append(frame.astype(np.float64) * slope + intercept)
    return out


@pytest.mark.parametrize("path", FILES, ids=[str(Path(p).relative_to(Path(pydicom.data.__file__).parent)) for p in FILES])
def test_pydicom_corpus_file(path):
    from medcbir.imaging.sop_classes import not_image_class

    head = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if not_image_class(str(head.get("SOPClassUID", ""))):
        # SEG label maps, SR/KOS documents: not images for retrieval, even with pixel data
        with pytest.raises(SkipFile) as info:
            read_dicom(path)
        assert info.value.reason == "not-an-image"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            expected = oracle(ds)
        except Exception as exc:  # pydicom cannot decode it: medcbir must skip it cleanly
            with pytest.raises(SkipFile) as info:
                read_dicom(path)
            assert info.value.reason in SKIP_REASONS, (exc, info.value.reason)
            return  # checked: medcbir skips what pydicom cannot decode, with a known reason
    items = read_dicom(path)
    assert len(items) == len(expected)
    for index, (item, want) in enumerate(zip(items, expected)):
        assert item.meta.frame == index
        assert item.pixels.dtype == np.float32 and item.pixels.shape == want.shape == (item.meta.rows, item.meta.cols)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(item.pixels, want, rtol=1e-6, atol=1e-6 * scale)
        assert item.inverted == (ds.PhotometricInterpretation == "MONOCHROME1")
