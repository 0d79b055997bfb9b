"""Write phantom slices as real DICOM CT files, each patient as if from a different scanner.

The scanners differ the way real archives do: stored pixel values offset by a RescaleIntercept
of −1024 (unsigned) or 0 (signed), 12 or 16 bits stored, explicit or implicit VR little endian,
and RLE Lossless or JPEG 2000 lossless compression (encoded by pydicom's own encoders). All UIDs,
dates and times derive from the archive seed, so the same seed writes the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

UID_NAMESPACE = "medcbir-phantom"


@dataclass(frozen=True)
class Scanner:
    """How one (simulated) scanner stores its images.

    Args:
        manufacturer, model: the Manufacturer / ManufacturerModelName tags.
        intercept: RescaleIntercept (−1024 with unsigned pixels, 0 with signed ones).
        bits_stored: 12 or 16.
        transfer_syntax: the UID the scanner sends when compression is allowed.
        kvp, kernel: KVP and ConvolutionKernel tags.
        noise_hu: typical image noise (standard deviation, HU).
        psf_mm: Gaussian point-spread function standard deviation in mm.
        windows: default (centre, width) pairs written to WindowCenter/Width.
    """

    manufacturer: str
    model: str
    intercept: int
    bits_stored: int
    transfer_syntax: str
    kvp: int
    kernel: str
    noise_hu: float
    psf_mm: float
    windows: tuple[tuple[int, int], ...]

    @property
    def signed(self) -> bool:
        return self.intercept == 0

    def syntax(self, compress: bool) -> str:
        """The transfer syntax actually written (compressed scanners fall back to explicit VR)."""
        if compress or self.transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            return self.transfer_syntax
        return ExplicitVRLittleEndian

    def stored_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


SCANNERS: tuple[Scanner, ...] = (
    Scanner("SIEMENS", "SOMATOM Definition AS+", -1024, 12, ExplicitVRLittleEndian, 120, "B30f", 12.0, 0.8,
            ((40, 400),)),
    Scanner("GE MEDICAL SYSTEMS", "LightSpeed VCT", -1024, 16, ImplicitVRLittleEndian, 120, "STANDARD", 15.0, 0.9,
            ((40, 400), (-600, 1600))),
    Scanner("TOSHIBA", "Aquilion ONE", 0, 16, RLELossless, 100, "FC08", 18.0, 1.0, ((50, 350),)),
    Scanner("Philips", "iCT 256", 0, 12, JPEG2000Lossless, 120, "B", 11.0, 0.7, ((40, 400),)),
)


def uid(seed: int, *parts: object) -> str:
    """A UID derived only from the seed and ``parts`` (deterministic, unique per part tuple)."""
    return generate_uid(entropy_srcs=[UID_NAMESPACE, str(seed), *map(str, parts)])


def patient_id(seed: int, index: int) -> str:
    """The synthetic PatientID (written to PatientID; never part of a file path)."""
    return f"PHANTOM-{seed}-{index:03d}"


def patient_folder(seed: int, index: int) -> str:
    """The patient's folder name in the archive: a pseudonym (a hash of the seed and the index),
    so no file path reveals PatientID or PatientName, as a de-identified archive would store it."""
    digest = hashlib.sha256(f"{UID_NAMESPACE}|folder|{seed}|{index}".encode()).hexdigest()
    return f"case-{digest[:12]}"


@dataclass(frozen=True)
class SeriesInfo:
    """What is constant across one patient's series."""

    seed: int
    patient_id: str
    patient_name: str
    sex: str
    birth_date: str
    study_date: str
    study_time: str
    study_uid: str
    series_uid: str
    frame_uid: str
    accession: str
    scanner: Scanner
    compress: bool
    size: int
    fov_mm: float
    slice_spacing_mm: float
    top_mm: float
    study_index: int = 0
    # Phantom v2 (None / defaults: the original phantom's tags):
    slice_thickness_mm: float | None = None
    kernel: str | None = None
    phase: str = "portal-venous"
    mr: dict | None = None  # MR-like series: {"scale", "gamma", "windows": [(c, w)] or None, "bits"}

    @property
    def pixel_spacing_mm(self) -> float:
        return self.fov_mm / self.size

    def to_dict(self) -> dict:
        """JSON-friendly description (for phantom.json; no name/birth date: not needed there)."""
        scanner = asdict(self.scanner)
        scanner["transfer_syntax"] = self.scanner.syntax(self.compress)
        scanner["transfer_syntax_name"] = pydicom.uid.UID(scanner["transfer_syntax"]).name
        scanner["signed"] = self.scanner.signed
        return {
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_uid,
            "series_instance_uid": self.series_uid,
            "study_date": self.study_date,
            "study_time": self.study_time,
            "accession_number": self.accession,
            "scanner": scanner,
            "fov_mm": round(self.fov_mm, 3),
            "pixel_spacing_mm": round(self.pixel_spacing_mm, 5),
            "slice_spacing_mm": round(self.slice_spacing_mm, 4),
            "top_mm": round(self.top_mm, 3),
            "slice_thickness_mm": round(self.slice_thickness_mm or self.slice_spacing_mm, 4),
            "convolution_kernel": self.kernel or self.scanner.kernel,
            "modality": "MR" if self.mr else "CT",
            **({"mr": self.mr} if self.mr else {}),
        }


def series_info(seed: int, index: int, scanner: Scanner, *, size: int, slices: int, compress: bool,
                rng: np.random.Generator) -> SeriesInfo:
    """Draw the series-level settings of patient ``index`` (dates, FOV, table position)."""
    study_day = dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 1000)))
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 60 * 365)))
    span_mm = float(rng.uniform(380, 460))  # upper chest to pelvis
    return SeriesInfo(
        seed=seed,
        patient_id=patient_id(seed, index),
        patient_name=f"PHANTOM^CASE{index:03d}",
        sex="MF"[int(rng.integers(0, 2))],
        birth_date=birth.strftime("%Y%m%d"),
        study_date=study_day.strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        study_uid=uid(seed, index, "study"),
        series_uid=uid(seed, index, "series"),
        frame_uid=uid(seed, index, "frame-of-reference"),
        accession=f"A{seed % 100000:05d}{index:04d}",
        scanner=scanner,
        compress=compress,
        size=size,
        fov_mm=float(rng.uniform(340, 420)),
        slice_spacing_mm=span_mm / slices,
        top_mm=float(rng.uniform(-150, 150)),
    )


def follow_up(first: SeriesInfo, study: int, previous_date: str, rng: np.random.Generator) -> SeriesInfo:
    """The settings of a later exam (``study`` ≥ 1) of the patient whose first exam is ``first``.

    What changes between exams the way it does in a real archive: new study/series/frame UIDs
    and accession number, a later date (1–14 months after the previous exam) and another time
    of day, a field of view within ±4 % of the first exam's, and the table position (scanner
    coordinates of the range). The patient, scanner and slice spacing stay.
    """
    day = dt.datetime.strptime(previous_date, "%Y%m%d").date() + dt.timedelta(days=int(rng.integers(30, 430)))
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    index = first.study_index  # parts below keep every UID distinct from the first exam's
    return replace(
        first,
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        study_uid=uid(first.seed, first.patient_id, "study", study, index),
        series_uid=uid(first.seed, first.patient_id, "series", study, index),
        frame_uid=uid(first.seed, first.patient_id, "frame-of-reference", study, index),
        accession=f"{first.accession}{study:02d}",
        fov_mm=first.fov_mm * float(rng.uniform(0.96, 1.04)),
        top_mm=float(rng.uniform(-150, 150)),
        study_index=study,
    )


def to_stored(hu: np.ndarray, scanner: Scanner) -> np.ndarray:
    """HU → stored pixel values (rounded, clipped like a scanner: nothing below −1024 HU)."""
    lo, hi = scanner.stored_range()
    stored = np.rint(hu) - scanner.intercept
    np.clip(stored, max(lo, -1024 - scanner.intercept), hi, out=stored)
    return stored.astype(np.int16 if scanner.signed else np.uint16)


SERIES_DESCRIPTIONS = {"portal-venous": "AXIAL PORTAL VENOUS", "arterial": "AXIAL ARTERIAL",
                       "non-contrast": "AXIAL NON-CONTRAST"}


def mr_intensity(hu: np.ndarray, mr: dict) -> np.ndarray:
    """An MR-like intensity image from the HU one: no HU, an arbitrary per-patient scale and
    gamma (not MR physics: only what a retrieval engine must not rely on, i.e. absolute values)."""
    level = np.clip((hu + 1000.0) / 1400.0, 0.0, 1.0) ** np.float32(mr["gamma"])
    top = (1 << mr["bits"]) - 1
    return np.clip(np.rint(level * np.float32(mr["scale"])), 0, top).astype(np.uint16)


def series_template(info: SeriesInfo) -> dict:
    """The elements every slice of the series shares, built (and validated) once per series.

    Slices reuse these element objects; everything that changes per slice, or that pydicom's
    encoders may touch, is set on each slice's own dataset in :func:`slice_dataset`.
    """
    scanner = info.scanner
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = info.study_date
    ds.StudyTime = ds.SeriesTime = info.study_time
    ds.AccessionNumber = info.accession
    ds.Modality = "CT"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = "medcbir synthetic hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS WITH CONTRAST (PHANTOM)"
    ds.SeriesDescription = SERIES_DESCRIPTIONS[info.phase]
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    if info.phase != "non-contrast":
        ds.ContrastBolusAgent = "IODINATED"
    ds.SliceThickness = f"{info.slice_thickness_mm or info.slice_spacing_mm:.3f}"
    ds.KVP = scanner.kvp
    ds.ReconstructionDiameter = f"{info.fov_mm:.2f}"
    ds.ConvolutionKernel = info.kernel or scanner.kernel
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = str(info.study_index + 1)
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = info.frame_uid
    ds.PositionReferenceIndicator = ""
    spacing = f"{info.pixel_spacing_mm:.6f}"
    ds.PixelSpacing = [spacing, spacing]
    ds.WindowCenter = [str(c) for c, _ in scanner.windows] if len(scanner.windows) > 1 else str(scanner.windows[0][0])
    ds.WindowWidth = [str(w) for _, w in scanner.windows] if len(scanner.windows) > 1 else str(scanner.windows[0][1])
    ds.RescaleIntercept = str(scanner.intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    if info.mr:
        _as_mr(ds, info)
    return {elem.tag: elem for elem in ds}


def _as_mr(ds: Dataset, info: SeriesInfo) -> None:
    """Turn the CT template into an MR Image one: no rescale (no HU), MR acquisition tags,
    windows present or absent as the patient's settings say."""
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "KVP", "ConvolutionKernel",
                    "ContrastBolusAgent", "WindowCenter", "WindowWidth", "ReconstructionDiameter"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.StudyDescription = "MR ABDOMEN (PHANTOM)"
    ds.SeriesDescription = "AX T1-LIKE (PHANTOM)"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "5.5"
    ds.EchoTime = "2.2"
    ds.MagneticFieldStrength = "1.5"
    ds.EchoTrainLength = 1
    if info.mr.get("windows"):
        ds.WindowCenter = str(info.mr["windows"][0][0])
        ds.WindowWidth = str(info.mr["windows"][0][1])


def slice_dataset(info: SeriesInfo, template: dict, instance: int, z_mm: float, body_part: str) -> Dataset:
    """The full CT Image dataset of one slice (pixel data not yet attached).

    Args:
        info: the series settings.
        template: :func:`series_template` of ``info``.
        instance: InstanceNumber (1-based, head first).
        z_mm: z of ImagePositionPatient / SliceLocation.
        body_part: BodyPartExamined.
    """
    scanner = info.scanner
    sop_class = MRImageStorage if info.mr else CTImageStorage
    parts = ("sop", instance) if info.study_index == 0 else ("sop", instance, "study", info.study_index)
    sop_uid = uid(info.seed, info.patient_id, *parts)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # replaced when written otherwise

    ds = Dataset(dict(template))
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    # Slices are acquired 0.05 s apart, a minute after the study starts (fixed by the seed).
    seconds = int(info.study_time[:2]) * 3600 + int(info.study_time[2:4]) * 60 + int(info.study_time[4:]) + 60
    ds.AcquisitionTime = ds.ContentTime = (
        f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{instance * 50000 % 1000000:06d}")
    ds.BodyPartExamined = body_part
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{-info.fov_mm / 2:.3f}", f"{-info.fov_mm / 2:.3f}", f"{z_mm:.3f}"]
    ds.SliceLocation = f"{z_mm:.3f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = info.size
    ds.BitsAllocated = 16
    bits = info.mr["bits"] if info.mr else scanner.bits_stored
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0 if info.mr else int(scanner.signed)
    return ds


def write_slice(path: Path, ds: Dataset, stored: np.ndarray, syntax: str) -> None:
    """Attach the pixels (compressing them if ``syntax`` asks) and write a DICOM Part 10 file."""
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.compress(syntax, stored, generate_instance_uid=False)
    # pydicom issues many small writes; collecting them in memory and writing once is faster.
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    path.write_bytes(buffer.getbuffer())
