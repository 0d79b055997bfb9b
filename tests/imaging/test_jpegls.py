"""JPEG-LS lossless ingest: files of that transfer syntax decode through ``read_dicom`` and
``walk`` to exactly the pixels that were encoded (pyjpegls, pinned, is pydicom's decoder)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless

from medcbir.imaging import read_dicom, walk
from medcbir.imaging.phantom import make_archive


def test_pyjpegls_is_the_installed_decoder():
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    assert "pyjpegls" in JPEGLSLosslessDecoder.available_plugins


@pytest.mark.parametrize("signed", [False, True])
def test_known_pixels_round_trip_exactly(tmp_path, signed):
    """A JPEG-LS file made from known values (the full 16-bit range incl. negatives when signed)
    reads back through read_dicom as those values, rescaled."""
    rng = np.random.default_rng(1)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    pixels = rng.integers(info.min, info.max, size=(37, 53), endpoint=True).astype(dtype)
    summary = make_archive(tmp_path / "a", patients=1, slices=1, size=32, simple=True, compress=False)
    ds = pydicom.dcmread(summary.dicom_files[0])
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.compress(JPEGLSLossless, pixels, generate_instance_uid=False)
    path = tmp_path / "jpegls.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLSLossless
    items = read_dicom(path)
    np.testing.assert_array_equal(items[0].pixels, pixels.astype(np.float64) - 1024)


def test_phantom_jpegls_files_read_and_walk_exactly(tmp_path):
    """Phantom v2 writes some files JPEG-LS lossless; read_dicom and walk give the pixels GDCM
    (an independent JPEG-LS decoder) gives."""
    from pydicom.pixels import pixel_array

    summary = make_archive(tmp_path / "a", patients=4, slices=4, seed=7, size=64)
    syntaxes = {p: str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in summary.dicom_files}
    jpegls = [p for p, syntax in syntaxes.items() if syntax == JPEGLSLossless]
    assert len(jpegls) >= 2 and Counter(syntaxes.values())[JPEGLSLossless] == summary.transfer_syntaxes[
        "JPEG-LS Lossless Image Compression"]
    walked = {d.meta.source: d.image for d in walk(jpegls, workers=1)}
    assert len(walked) == len(jpegls)
    for path in jpegls:
        intercept = float(pydicom.dcmread(path, stop_before_pixels=True).RescaleIntercept)
        expected = pixel_array(path, decoding_plugin="gdcm").astype(np.float64) + intercept
        np.testing.assert_array_equal(read_dicom(path)[0].pixels, expected)
        np.testing.assert_array_equal(walked[str(path)], expected)
