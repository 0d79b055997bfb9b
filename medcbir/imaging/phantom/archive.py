"""Write a whole phantom archive: DICOM series, labels.csv, masks.h5 and phantom.json."""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from medcbir.errors import ConfigError
from medcbir.imaging.phantom.anatomy import HU_RANGES, LABELS, ORGANS, Patient
from medcbir.imaging.phantom.masks import MaskWriter, deflate_masks
from medcbir.imaging.phantom.slices import SliceRenderer
from medcbir.imaging.phantom.writer import (
    SCANNERS,
    follow_up,
    patient_folder,
    series_info,
    series_template,
    slice_dataset,
    to_stored,
    write_slice,
)

FORMAT = "medcbir-phantom"
VERSION = 1
MIN_SIZE, MAX_SIZE = 32, 2048
# A PSF narrower than this is invisible on the pixel grid; this much also stands in for the
# partial-volume averaging over a pixel that point sampling of the outlines leaves out.
MIN_BLUR_PX = 0.5


@dataclass
class PhantomSummary:
    """What :func:`make_archive` wrote.

    Attributes:
        out: archive folder.
        patients, slices, size, seed: the parameters.
        files: DICOM files written (= slices, one frame each).
        labels: slices per level label.
        transfer_syntaxes: files per transfer syntax name.
        elapsed: wall-clock seconds.
        labels_csv, masks_h5, phantom_json: the ground-truth files.
        dicom_files: every DICOM file, in series order.
        studies_per_patient: studies (exams) per patient.
        slices_csv: per-slice truth (patient folder, study, body position, level).
    """

    out: Path
    patients: int
    slices: int
    size: int
    seed: int
    files: int
    labels: dict[str, int]
    transfer_syntaxes: dict[str, int]
    elapsed: float
    labels_csv: Path
    masks_h5: Path
    phantom_json: Path
    dicom_files: list[Path] = field(default_factory=list, repr=False)
    studies_per_patient: int = 1
    slices_csv: Path | None = None

    @property
    def slices_per_second(self) -> float:
        return self.files / self.elapsed if self.elapsed > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "patients": self.patients, "slices": self.slices, "size": self.size,
            "seed": self.seed, "files": self.files, "labels": dict(self.labels),
            "transfer_syntaxes": dict(self.transfer_syntaxes), "elapsed": round(self.elapsed, 3),
            "slices_per_second": round(self.slices_per_second, 1), "labels_csv": str(self.labels_csv),
            "masks_h5": str(self.masks_h5), "phantom_json": str(self.phantom_json),
            "studies_per_patient": self.studies_per_patient, "slices_csv": str(self.slices_csv),
        }


def _check(patients: int, slices: int, size: int, seed: int, studies_per_patient: int = 1) -> None:
    if studies_per_patient < 1:
        raise ConfigError(f"--studies-per-patient must be at least 1 (got {studies_per_patient})")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more (got {seed})")
    if patients < 1:
        raise ConfigError(f"--patients must be at least 1 (got {patients})")
    if slices < 1:
        raise ConfigError(f"--slices must be at least 1 (got {slices})")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels (got {size})")


def _prepare(out: Path) -> None:
    """Create ``out``; replace a previous phantom archive there, refuse any other content."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    previous = out / "phantom.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text())
            folders = [p["folder"] for p in old["patients"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{previous} is not a phantom description; remove {out} first") from exc
        for folder in folders:
            target = (out / folder).resolve()
            if target.parent == out.resolve() and target.is_dir():
                shutil.rmtree(target)
        for name in ("labels.csv", "slices.csv", "masks.h5", "phantom.json"):
            (out / name).unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no phantom archive; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)


BOUNDARY_NAMES = ("liver_top", "kidney_top", "liver_bottom", "kidney_bottom")
# Later exams start their range up to this far (fraction of the range) above or below the first
# exam's: small enough that ≥ 10 slices still hit every level band (see anatomy's docstring).
FOLLOW_UP_SHIFT = 0.03


@dataclass(frozen=True)
class WrittenSlice:
    """One written slice as the parent process needs it (labels, masks.h5, slices.csv)."""

    sop_instance_uid: str
    label: str
    path: Path
    syntax_name: str
    masks: dict
    truth: tuple  # the slices.csv row after sop_instance_uid, frame


def _write_patient(job: tuple) -> tuple[list[WrittenSlice], dict]:
    """Render and write one patient's studies; return its slices and its phantom.json entry."""
    out, seed, index, scanner_index, slices, size, compress, studies = job
    patient = Patient.draw(seed, index)
    rng = np.random.default_rng([seed, index, 0x5E21E5])
    scanner = SCANNERS[scanner_index]
    first = series_info(seed, index, scanner, size=size, slices=slices, compress=compress, rng=rng)
    first_noise = float(np.clip(scanner.noise_hu * rng.uniform(0.85, 1.2), 10.0, 20.0))
    folder = patient_folder(seed, index)
    written: list[WrittenSlice] = []
    exams = []
    info = first
    for study in range(studies):
        if study == 0:
            noise, shift, scanned = first_noise, 0.0, patient
        else:
            # A later exam: its own settings drawn from its own stream (the first exam's bytes
            # do not depend on how many follow), same anatomy, other bolus timing and noise.
            study_rng = np.random.default_rng([seed, index, study, 0x57D7])
            info = follow_up(first, study, info.study_date, study_rng)
            noise = float(np.clip(scanner.noise_hu * study_rng.uniform(0.85, 1.2), 10.0, 20.0))
            shift = float(study_rng.uniform(-FOLLOW_UP_SHIFT, FOLLOW_UP_SHIFT))
            scanned = patient.with_contrast(patient.contrast + study_rng.uniform(-0.15, 0.15))
        slices_written, exam = _write_study(out / folder / f"study-{study + 1}" / "series-2", seed, index, info,
                                            scanned, slices, noise, shift)
        written += slices_written
        exams.append(exam)
    description = {"index": index, "folder": folder, **exams[0], "studies": exams}
    return written, description


def _write_study(series_dir: Path, seed: int, index: int, info, patient: Patient, slices: int, noise: float,
                 shift: float) -> tuple[list[WrittenSlice], dict]:
    """Write one series; slice ``i`` lies at body position ``z = (i + 0.5) / slices + shift``."""
    scanner = info.scanner
    size = info.size
    blur = max(MIN_BLUR_PX, scanner.psf_mm / info.pixel_spacing_mm)
    syntax = scanner.syntax(info.compress)
    template = series_template(info)
    renderer = SliceRenderer(patient, size)
    syntax_name = pydicom.uid.UID(syntax).name
    series_dir.mkdir(parents=True)
    span = info.slice_spacing_mm * slices
    study = info.study_index
    written = []
    for i in range(slices):
        z = (i + 0.5) / slices + shift
        z_mm = info.top_mm - z * span
        label = patient.label_at(z)
        parts = [seed, index, i, 0x4015E] + ([study] if study else [])
        rendered = renderer.render(z, noise_hu=noise, blur_px=blur, rng=np.random.default_rng(parts))
        stored = to_stored(rendered.hu, scanner)
        ds = slice_dataset(info, template, i + 1, z_mm, "CHEST" if label == "thorax" else "ABDOMEN")
        path = series_dir / f"{i + 1:04d}.dcm"
        write_slice(path, ds, stored, syntax)
        truth = (series_dir.parent.parent.name, info.study_uid, info.series_uid, info.study_date, i + 1,
                 round(z, 6), round(z * span, 3), round(z_mm, 3), label)
        written.append(WrittenSlice(str(ds.SOPInstanceUID), label, path, syntax_name,
                                    deflate_masks(rendered.masks), truth))
    labels = [w.label for w in written]
    exam = {
        **info.to_dict(),
        "study_index": study,
        "z_shift": round(shift, 6),
        "noise_hu": round(noise, 3),
        "blur_px": round(blur, 4),
        "contrast": round(patient.contrast, 4),
        "level_boundaries_z": dict(zip(BOUNDARY_NAMES, (round(b, 5) for b in patient.boundaries))),
        "level_boundaries_mm": {name: round(info.top_mm - b * span, 3)
                                for name, b in zip(BOUNDARY_NAMES, patient.boundaries)},
        "labels": {label: labels.count(label) for label in LABELS},
        "organ_hu": {k: round(v, 2) for k, v in patient.hu.items()},
    }
    return written, exam


def _patients(jobs: list[tuple], workers: int):
    """Yield :func:`_write_patient` results in patient order, in worker processes when it pays.

    At most ``2 × workers`` patients are in flight, so the masks waiting for the parent (which
    alone writes masks.h5) stay bounded.
    """
    import multiprocessing
    import os
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    total_slices = sum(job[4] * job[7] for job in jobs)
    if workers <= 0:
        workers = min(os.cpu_count() or 1, len(jobs)) if total_slices >= 64 else 1
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_write_patient, jobs)
        return
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque = deque()
        queue = iter(jobs)
        for job in queue:
            pending.append(pool.submit(_write_patient, job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            yield pending.popleft().result()
            job = next(queue, None)
            if job is not None:
                pending.append(pool.submit(_write_patient, job))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


SLICES_COLUMNS = ("sop_instance_uid", "frame", "patient", "study_instance_uid", "series_instance_uid",
                  "study_date", "instance_number", "z", "z_mm", "slice_location_mm", "label")


def make_archive(out: str | Path, patients: int = 4, slices: int = 32, seed: int = 0, size: int = 256,
                 compress: bool = True, workers: int = 0, *, studies_per_patient: int = 1) -> PhantomSummary:
    """Write a synthetic CT archive with ground truth.

    Each patient has ``studies_per_patient`` studies (exams), each with one axial series running
    from the upper thorax to the pelvis; each patient gets its own anatomy and, in turn, one of
    :data:`SCANNERS` (so any four consecutive patients cover every storage variant). Files:
    ``out/<folder>/study-<k>/series-2/<instance>.dcm`` (``<folder>`` a pseudonym, ``case-<hex>``:
    no path reveals PatientID or PatientName), ``out/labels.csv``, ``out/slices.csv`` (per-slice
    truth), ``out/masks.h5`` (``/<sop_instance_uid>/<organ>`` uint8 masks, gzip; group attributes
    ``label`` and ``path``, the file relative to ``out``) and ``out/phantom.json``.

    Later exams of a patient (``studies_per_patient`` > 1) change what changes between real
    exams: new UIDs, StudyDate 1–14 months after the previous exam, field of view within ±4 %,
    table position, the scanned range shifted by up to ±3 % of its length, bolus timing (organ
    enhancement) and noise; the anatomy, hence the level of every body position, stays.
    ``slices.csv`` gives each slice's body position ``z`` (0 = top of the patient's nominal range,
    1 = bottom; the same frame in every exam of a patient) and ``z_mm`` (= z × range length), so
    the truly corresponding slice of another exam is the one of nearest ``z``.

    Args:
        out: archive folder (created; a previous phantom archive there is replaced).
        patients: number of patients.
        slices: axial slices per series; ≥ 10 guarantees every level label in every series.
        seed: everything (anatomy, noise, UIDs, dates) derives from it: same seed, same bytes.
        size: rows = columns of every slice.
        compress: let the compressing scanners write RLE / JPEG 2000 lossless.
        workers: processes rendering and writing patients (0 = one per core for archives of
            ≥ 64 slices, in-process below that, where starting workers costs more than it saves).
            The bytes written do not depend on it: every patient and slice has its own seed.
        studies_per_patient: exams per patient (≥ 1); the first exam's files do not depend on it.

    Returns:
        A :class:`PhantomSummary`.

    Raises:
        ConfigError: bad parameters or an output folder holding something else.
    """
    _check(patients, slices, size, seed, studies_per_patient)
    out = Path(out)
    _prepare(out)
    parameters = {"patients": patients, "slices": slices, "size": size, "compress": compress,
                  "studies_per_patient": studies_per_patient}
    # Written first and replaced at the end: an interrupted run leaves a description listing the
    # folders it may have written, so re-running into the same folder can clean them up.
    _write_json(out / "phantom.json", {
        "format": FORMAT, "version": VERSION, "complete": False, "seed": seed, "parameters": parameters,
        "patients": [{"index": i, "folder": patient_folder(seed, i)} for i in range(patients)],
    })
    started = time.perf_counter()
    order = np.random.default_rng([seed, 0x5CA7]).permutation(len(SCANNERS))
    labels_count = {label: 0 for label in LABELS}
    syntax_count: dict[str, int] = {}
    rows: list[tuple[str, int, str]] = []
    truth_rows: list[tuple] = []
    description = []
    dicom_files: list[Path] = []

    mask_attrs = {"format": FORMAT, "version": VERSION, "seed": seed, "organs": list(ORGANS)}
    jobs = [(out, seed, index, int(order[index % len(SCANNERS)]), slices, size, compress, studies_per_patient)
            for index in range(patients)]
    with MaskWriter(out / "masks.h5", size, mask_attrs) as masks_file:
        for written, patient_description in _patients(jobs, workers):
            for item in written:
                masks_file.add(item.sop_instance_uid, ORGANS, item.masks,
                               {"label": item.label, "path": item.path.relative_to(out).as_posix()})
                rows.append((item.sop_instance_uid, 0, item.label))
                truth_rows.append((item.sop_instance_uid, 0, *item.truth))
                labels_count[item.label] += 1
                syntax_count[item.syntax_name] = syntax_count.get(item.syntax_name, 0) + 1
                dicom_files.append(item.path)
            description.append(patient_description)

    _write_csv(out / "labels.csv", ("sop_instance_uid", "frame", "label"), rows)
    _write_csv(out / "slices.csv", SLICES_COLUMNS, truth_rows)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "complete": True,
        "seed": seed,
        "parameters": parameters,
        "labels": list(LABELS),
        "label_rule": "z in [0,1] from top of range; thorax < liver_top <= liver-dome < kidney_top <= "
                      "liver-kidney < liver_bottom <= kidney < kidney_bottom <= pelvis; "
                      "slice i at z=(i+0.5)/slices+z_shift (z_shift 0 in a patient's first study)",
        "organs": list(ORGANS),
        "hu_ranges": {k: list(v) for k, v in HU_RANGES.items()},
        "patients": description,
    }
    _write_json(out / "phantom.json", manifest)
    elapsed = time.perf_counter() - started
    return PhantomSummary(
        out=out, patients=patients, slices=slices, size=size, seed=seed, files=len(rows),
        labels=labels_count, transfer_syntaxes=syntax_count, elapsed=elapsed,
        labels_csv=out / "labels.csv", masks_h5=out / "masks.h5", phantom_json=out / "phantom.json",
        dicom_files=dicom_files, studies_per_patient=studies_per_patient, slices_csv=out / "slices.csv",
    )


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
