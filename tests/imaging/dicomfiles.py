"""Real DICOM files written with pydicom for the imaging tests (small, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

PATIENT_ID = "PAT-SECRET-4711"
PATIENT_NAME = "Doe^Jane"


def hu_phantom(size: int = 32, seed: int = 0) -> np.ndarray:
    """A small CT-like HU image: air, a water disc with a bone spot, noise; int16 range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    hu = np.full((size, size), -1000, dtype=np.int32)
    hu[r < size * 0.4] = 40
    hu[np.hypot(yy - size * 0.6, xx - size / 2) < size * 0.08] = 900
    hu += rng.integers(-20, 21, size=hu.shape)
    return hu


def _base(sop_class: str, modality: str, tsyntax: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = PATIENT_ID
    ds.PatientName = PATIENT_NAME
    return ds


def ct_dataset(
    hu: np.ndarray,
    *,
    intercept: float = -1024.0,
    slope: float = 1.0,
    signed: bool = False,
    bits_stored: int = 16,
    tsyntax: str = ExplicitVRLittleEndian,
    position: float = -12.5,
    instance: int = 7,
) -> FileDataset:
    """A CT slice storing ``hu`` as (hu - intercept) / slope in the given representation."""
    stored = np.round((hu - intercept) / slope).astype(np.int64)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    assert stored.min() >= info.min and stored.max() <= info.max, "HU do not fit the representation"
    if not signed:
        assert stored.max() < 2**bits_stored
    ds = _base(CTImageStorage, "CT", ExplicitVRLittleEndian)
    ds.BodyPartExamined = "ABDOMEN"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-100.0, -100.0, position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.8]
    ds.SliceThickness = 2.5
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(dtype).tobytes()
    _set_syntax(ds, tsyntax)
    return ds


def _set_syntax(ds: FileDataset, tsyntax: str) -> None:
    from pydicom.uid import UID

    tsyntax = UID(tsyntax)
    if tsyntax.is_compressed:
        ds.compress(tsyntax)
    else:
        ds.file_meta.TransferSyntaxUID = tsyntax


def save(ds: FileDataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tsyntax = ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=tsyntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


def mr_monochrome1(size: int = 24) -> FileDataset:
    """An MR-like MONOCHROME1 image with a window, no rescale."""
    ds = _base(MRImageStorage, "MR", ExplicitVRLittleEndian)
    arr = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * 3) % 1000
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = 500
    ds.WindowWidth = 800
    ds.PixelData = arr.tobytes()
    return ds


def rgb_dataset(size: int = 16, seed: int = 1) -> tuple[FileDataset, np.ndarray]:
    """A secondary-capture RGB image and its pixels (size×size×3 uint8)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    ds = _base("1.2.840.10008.5.1.4.1.1.7", "OT", ExplicitVRLittleEndian)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    return ds, arr


def enhanced_ct(frames: np.ndarray, intercepts: list[float]) -> FileDataset:
    """A multi-frame CT with per-frame rescale and position in functional groups (no top-level rescale)."""
    ds = _base("1.2.840.10008.5.1.4.1.1.2.1", "CT", ExplicitVRLittleEndian)
    n, rows, cols = frames.shape
    ds.NumberOfFrames = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    per_frame = []
    for i in range(n):
        item = Dataset()
        pvt = Dataset()
        pvt.RescaleIntercept = intercepts[i]
        pvt.RescaleSlope = 1
        pvt.RescaleType = "HU"
        item.PixelValueTransformationSequence = [pvt]
        pos = Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, 10.0 * i]
        item.PlanePositionSequence = [pos]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PixelData = frames.astype(np.uint16).tobytes()
    return ds


def sr_dataset() -> FileDataset:
    """A structured report: DICOM without pixel data."""
    ds = _base("1.2.840.10008.5.1.4.1.1.88.11", "SR", ExplicitVRLittleEndian)
    ds.ValueType = "CONTAINER"
    return ds


def with_transfer_syntax_bytes(data: bytes, old: str, new: str) -> bytes:
    """Replace the transfer syntax UID in a file's meta header (same padded length)."""
    def pad(uid: str) -> bytes:
        raw = uid.encode()
        return raw + b"\0" if len(raw) % 2 else raw

    old_b, new_b = pad(old), pad(new)
    assert len(old_b) == len(new_b), "keep the element length so only the UID changes"
    assert data.count(old_b) >= 1
    return data.replace(old_b, new_b, 1)


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def seg_dataset(masks: np.ndarray | None = None) -> FileDataset:
    """A binary DICOM Segmentation (SEG) of two 8×8 frames: it has pixel data, but it is a label map."""
    masks = np.zeros((2, 8, 8), dtype=np.uint8) if masks is None else np.asarray(masks, dtype=np.uint8)
    masks[0, 2:5, 2:5] = 1
    masks[1, 3:7, 1:4] = 1
    ds = _base("1.2.840.10008.5.1.4.1.1.66.4", "SEG", ExplicitVRLittleEndian)
    ds.SegmentationType = "BINARY"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = masks.shape[1], masks.shape[2], masks.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "liver"
    segment.SegmentAlgorithmType = "MANUAL"
    ds.SegmentSequence = [segment]
    ds.PixelData = np.packbits(masks.ravel(), bitorder="little").tobytes()
    return ds


def document_dataset(sop_class: str, modality: str) -> FileDataset:
    """A pixel-less document object (KOS, presentation state, encapsulated PDF, RT structure set)."""
    ds = _base(sop_class, modality, ExplicitVRLittleEndian)
    if sop_class == "1.2.840.10008.5.1.4.1.1.104.1":
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return ds


def medcbir_overlay(hu: np.ndarray) -> FileDataset:
    """A CT-looking Secondary Capture that medcbir itself derived (Manufacturer ``medcbir``)."""
    ds = ct_dataset(hu)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Manufacturer = "medcbir"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    return ds
