"""A small multi-study archive for the case-level and prior-exam tests (real DICOM, real index).

Built from the session's phantom archive (4 patients × 20 slices): each patient's series is the
current exam (study A); an earlier exam (study B, 400 days before) has two series that cover
other ranges of the body at another table position (z shifted) with other noise: B1 = levels
3..19 shifted by +40 mm, B2 = levels 0..15 shifted by -12.5 mm. Patients 0 and 1 also have an
older exam (study C, 800 days before) with all levels. Ground truth: every slice's level (its
index in the patient's original series), in ``levels.csv``.
"""

from __future__ import annotations

import csv
import datetime
import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

EXAMS = {  # study → (days before the current exam, [(series, first level, last level + 1, shift mm, noise HU)])
    "B": (400, [("B1", 3, 20, 40.0, 15.0), ("B2", 0, 16, -12.5, 25.0)]),
    "C": (800, [("C1", 0, 20, 0.0, 15.0)]),
}


def _rewrite(src: Path, dst: Path, *, study: str, series: str, shift: float, noise: float, instance: int, date: str, rng) -> str:
    from medcbir.imaging import read_dicom

    hu = read_dicom(src)[0].pixels
    ds = pydicom.dcmread(src)
    noisy = np.clip(np.round(hu + rng.normal(0, noise, hu.shape)), -1024, 3071).astype(np.int16)
    for keyword in ("LargestImagePixelValue", "SmallestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = noisy.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = instance
    position = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [position[0], position[1], position[2] + shift]
    ds.StudyDate = ds.SeriesDate = date
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def make_multistudy(phantom: Path, out: Path, seed: int = 0) -> Path:
    """Copy ``phantom`` to ``out`` and add the earlier exams; write ``out/levels.csv``."""
    rng = np.random.default_rng(seed)
    shutil.copytree(phantom, out)
    rows = []
    for p, patient in enumerate(sorted(d for d in out.iterdir() if d.is_dir())):
        files = sorted(patient.glob("series-2/*.dcm")) or sorted(patient.glob("study-*/series-2/*.dcm"))
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        current = datetime.datetime.strptime(str(head.StudyDate), "%Y%m%d")
        for level, f in enumerate(files):
            rows.append((str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), patient.name, "A", level))
        for exam, (days, series_list) in EXAMS.items():
            if exam == "C" and p > 1:
                continue
            study = generate_uid()
            date = (current - datetime.timedelta(days=days)).strftime("%Y%m%d")
            for name, first, last, shift, noise in series_list:
                series = generate_uid()
                for n, level in enumerate(range(first, last)):
                    dst = patient / f"study-{exam}" / name / f"{n + 1:04d}.dcm"
                    sop = _rewrite(files[level], dst, study=study, series=series, shift=shift, noise=noise, instance=n + 1, date=date, rng=rng)
                    rows.append((sop, patient.name, exam, level))
    with open(out / "levels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("sop_instance_uid", "patient", "exam", "level"))
        writer.writerows(rows)
    return out


def read_levels(path: Path) -> dict[str, tuple[str, str, int]]:
    with open(path, newline="") as fh:
        return {r["sop_instance_uid"]: (r["patient"], r["exam"], int(r["level"])) for r in csv.DictReader(fh)}
