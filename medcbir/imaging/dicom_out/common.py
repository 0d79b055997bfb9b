"""What every DICOM object medcbir writes shares: its mark, its source's header, its file.

Each object (:mod:`medcbir.imaging.dicom_out`) carries Manufacturer ``medcbir`` and
a file-meta ImplementationVersionName starting ``MEDCBIR`` (:mod:`medcbir.imaging.sop_classes`),
so the indexer skips them as ``derived-by-medcbir`` and a heatmap never comes back as a
neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medcbir import __version__
from medcbir.errors import DecodeError
from medcbir.imaging.sop_classes import DERIVED_IMPLEMENTATION_PREFIX, DERIVED_MANUFACTURER

MANUFACTURER = DERIVED_MANUFACTURER
MODEL_NAME = "medcbir"
#: Said on every object: these are pictures of an algorithm's output, not of the patient.
NOT_FOR_DIAGNOSIS = "derived by medcbir - not for diagnosis"


def software_version() -> str:
    return str(__version__)


def implementation_version_name() -> str:
    """``MEDCBIR_<version>`` (SH: at most 16 characters)."""
    return f"{DERIVED_IMPLEMENTATION_PREFIX}_{software_version()}"[:16]


@dataclass(frozen=True)
class Reference:
    """What a document needs to reference one instance.

    Attributes:
        sop_class_uid, sop_instance_uid, series_instance_uid, study_instance_uid: its UIDs.
        patient_id: its PatientID (compared with the query's for the privacy rule, never written
            into a document of another patient).
        is_image: it has pixels (referenced as IMAGE, else as COMPOSITE).
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str = ""
    is_image: bool = True

    @classmethod
    def of(cls, ds) -> "Reference":
        """The reference of a pydicom dataset (a header is enough)."""
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID") if not str(ds.get(k, "") or "")]
        if missing:
            raise DecodeError(f"cannot reference {ds.get('SOPInstanceUID', '?')}: no {', '.join(missing)}")
        return cls(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                   str(ds.get("PatientID", "") or ""), "Rows" in ds and "Columns" in ds)

    def evidence(self):
        """A minimal dataset highdicom accepts as evidence / referenced object."""
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.StudyInstanceUID = self.study_instance_uid
        ds.PatientID = self.patient_id
        if self.is_image:
            ds.Rows, ds.Columns = 1, 1  # only their presence matters: an IMAGE reference
        return ds


def read_header(source) -> "object":
    """The header (everything before the pixels) of a DICOM file, or a one-line DecodeError."""
    import pydicom

    try:
        return pydicom.dcmread(str(source) if isinstance(source, Path) else source, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - one line for any unreadable file
        raise DecodeError(f"cannot read the DICOM header of {source}: {exc.__class__.__name__}: {exc}") from None


def mark(ds, description: str) -> None:
    """Mark ``ds`` as medcbir's (file meta) and describe its series."""
    ds.file_meta.ImplementationVersionName = implementation_version_name()
    ds.Manufacturer = MANUFACTURER
    ds.SeriesDescription = description[:64]


def save(ds, folder: Path) -> Path:
    """Write ``ds`` as ``<folder>/<Modality>_<SOPInstanceUID>.dcm`` (atomically) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def to_bytes(ds) -> bytes:
    """``ds`` as a DICOM Part 10 file in memory (what a STOW or an Orthanc upload takes)."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
