"""Write a whole phantom archive: DICOM series, labels.csv, masks.h5 and phantom.json."""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLSLossless, RLELossless

from medcbir.errors import ConfigError
from medcbir.imaging.phantom.anatomy import HU_RANGES, LABELS, ORGANS, Blob, Patient
from medcbir.imaging.phantom.lesions import KINDS, MASK_NAMES, draw_lesions, kind_label, lesion_truth
from medcbir.imaging.phantom.masks import MaskWriter, deflate_masks
from medcbir.imaging.phantom.slices import IDENTITY, Finish, Pose, SliceRenderer
from medcbir.imaging.phantom.variation import (
    ANATOMY_UNIT_MM,
    Nuisances,
    draw_nuisances,
    patient_v2,
    with_overrides,
)
from medcbir.imaging.phantom.writer import (
    SCANNERS,
    follow_up,
    mr_intensity,
    patient_folder,
    series_info,
    series_template,
    slice_dataset,
    to_stored,
    write_slice,
)

FORMAT = "medcbir-phantom"
VERSION = 2  # 2: phantom v2, pseudonymous folders, studies, slices.csv
VERSIONS = (2, 3)  # 3: phantom v2 with lesions of four kinds in liver, spleen and kidneys (opt-in)
LESION_KIND_CSV, LESION_BOXES_CSV = "labels-lesion-kind.csv", "lesion-boxes.csv"
BOX_COLUMNS = ("sop_instance_uid", "frame", "x", "y", "w", "h", "label")
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
        version: 2, or 3 (lesion kinds; then labels_lesion_kind_csv, lesion_boxes_csv and
            lesion_kinds, the lesion cross-sections written per kind).
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
    labels_liver_csv: Path | None = None
    labels_lesion_csv: Path | None = None
    simple: bool = False
    modality: str = "CT"
    version: int = VERSION
    labels_lesion_kind_csv: Path | None = None
    lesion_boxes_csv: Path | None = None
    lesion_kinds: dict[str, int] = field(default_factory=dict)

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
            "labels_liver_csv": str(self.labels_liver_csv) if self.labels_liver_csv else None,
            "labels_lesion_csv": str(self.labels_lesion_csv) if self.labels_lesion_csv else None,
            "simple": self.simple, "modality": self.modality, "version": self.version,
            "labels_lesion_kind_csv": str(self.labels_lesion_kind_csv) if self.labels_lesion_kind_csv else None,
            "lesion_boxes_csv": str(self.lesion_boxes_csv) if self.lesion_boxes_csv else None,
            "lesion_kinds": dict(self.lesion_kinds),
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
        for name in ("labels.csv", "slices.csv", "labels-liver.csv", "labels-lesion.csv", LESION_KIND_CSV,
                     LESION_BOXES_CSV, "masks.h5", "phantom.json"):
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
    study: int = 0
    has_liver: bool = False
    has_lesion: bool = False
    boxes: tuple = ()  # phantom v3: (number, kind, x, y, w, h) per lesion shown


@dataclass(frozen=True)
class Exam:
    """How one study of a patient is rendered and stored."""

    info: object  # writer.SeriesInfo
    patient: Patient
    noise: float
    shift: float
    blur_px: float
    pose: Pose = IDENTITY
    finish: Finish | None = None
    nuisances: Nuisances | None = None


def _write_patient(job: tuple) -> tuple[list[WrittenSlice], dict]:
    """Render and write one patient's studies; return its slices and its phantom.json entry."""
    out, seed, index, scanner_index, slices, size, compress, studies, simple, overrides, modality, version = job
    rng = np.random.default_rng([seed, index, 0x5E21E5])
    scanners = SCANNERS
    scanner = scanners[scanner_index]
    first = series_info(seed, index, scanner, size=size, slices=slices, compress=compress, rng=rng)
    first_noise = float(np.clip(scanner.noise_hu * rng.uniform(0.85, 1.2), 10.0, 20.0))
    folder = patient_folder(seed, index)
    plan = _plan_simple if simple else _plan_v3 if version == 3 else _plan_v2
    exams = plan(seed, index, first, first_noise, studies, overrides, modality, slices)
    written: list[WrittenSlice] = []
    descriptions = []
    for exam in exams:
        slices_written, description = _write_study(out / folder / f"study-{exam.info.study_index + 1}" / "series-2",
                                                   seed, index, exam, slices)
        written += slices_written
        descriptions.append(description)
    description = {"index": index, "folder": folder, **descriptions[0], "studies": descriptions}
    return written, description


def _plan_simple(seed: int, index: int, first, first_noise: float, studies: int, overrides, modality,
                 slices: int) -> list[Exam]:
    """The original phantom: one anatomy, fixed position and field of view per exam."""
    patient = Patient.draw(seed, index)
    exams, info = [], first
    for study in range(studies):
        if study == 0:
            noise, shift, scanned = first_noise, 0.0, patient
        else:
            # A later exam: its own settings drawn from its own stream (the first exam's bytes
            # do not depend on how many follow), same anatomy, other bolus timing and noise.
            study_rng = np.random.default_rng([seed, index, study, 0x57D7])
            info = follow_up(first, study, info.study_date, study_rng)
            noise = float(np.clip(first.scanner.noise_hu * study_rng.uniform(0.85, 1.2), 10.0, 20.0))
            shift = float(study_rng.uniform(-FOLLOW_UP_SHIFT, FOLLOW_UP_SHIFT))
            scanned = patient.with_contrast(patient.contrast + study_rng.uniform(-0.15, 0.15))
        blur = max(MIN_BLUR_PX, first.scanner.psf_mm / info.pixel_spacing_mm)
        exams.append(Exam(info, scanned, noise, shift, blur))
    return exams


SHARP_KERNELS = {"B30f": "B70f", "STANDARD": "BONE", "FC08": "FC30", "B": "D"}


def _plan_v2(seed: int, index: int, first, first_noise: float, studies: int, overrides, modality,
             slices: int) -> list[Exam]:
    """Phantom v2: every nuisance of :mod:`.variation` per patient, small changes per exam."""
    drawn = draw_nuisances(seed, index, total_span_mm=first.slice_spacing_mm * slices)
    mr = None
    if modality == "MR":
        mr_rng = np.random.default_rng([seed, index, 0x3A7])
        scale = float(mr_rng.uniform(600, 30000))
        mr = {"scale": round(scale, 1), "gamma": round(float(mr_rng.uniform(0.6, 1.6)), 4),
              "bits": 12 if scale < 4095 else 16,
              "windows": [[round(0.45 * scale), round(0.9 * scale)]] if mr_rng.uniform() < 0.5 else None}
    exams, info = [], first
    for study in range(studies):
        nuisances = drawn
        if study:
            study_rng = np.random.default_rng([seed, index, study, 0x57D7])
            info = follow_up(first, study, info.study_date, study_rng)
            nuisances = replace(
                drawn,
                offset_mm=(drawn.offset_mm[0] + float(study_rng.normal(0, 6)), drawn.offset_mm[1] + float(study_rng.normal(0, 6))),
                rotation_deg=drawn.rotation_deg + float(study_rng.uniform(-1.5, 1.5)),
                pixel_spacing=drawn.pixel_spacing * float(study_rng.uniform(0.96, 1.04)),
                contrast=min(max(drawn.contrast + float(study_rng.uniform(-0.15, 0.15)), 0.0), 1.0),
                noise_hu=drawn.noise_hu * float(study_rng.uniform(0.9, 1.1)),
            )
            shift = float(study_rng.uniform(-FOLLOW_UP_SHIFT, FOLLOW_UP_SHIFT))
        else:
            shift = 0.0
        nuisances = with_overrides(nuisances, overrides)
        scanner = first.scanner
        info = replace(info, fov_mm=nuisances.fov_mm, slice_thickness_mm=nuisances.slice_thickness_mm,
                       kernel=SHARP_KERNELS.get(scanner.kernel, scanner.kernel + "-SHARP")
                       if nuisances.kernel == "sharp" else scanner.kernel,
                       phase=nuisances.phase, mr=mr)
        half_fov = nuisances.fov_mm / 2.0
        pose = Pose(scale=ANATOMY_UNIT_MM / half_fov * nuisances.body_scale, angle=math.radians(nuisances.rotation_deg),
                    dx=nuisances.offset_mm[0] / half_fov, dy=nuisances.offset_mm[1] / half_fov)
        metal = None
        if nuisances.metal:
            m = nuisances.metal
            placed = pose.place(Blob(m["x"], m["y"], 0.03, 0.03))
            metal = (placed.cx, placed.cy, placed.ax, m["z_top"], m["z_bottom"], m["strength"])
        sharp = nuisances.kernel == "sharp"
        blur = max(MIN_BLUR_PX, scanner.psf_mm * (0.6 if sharp else 1.1) / info.pixel_spacing_mm)
        finish = Finish(sharpen=1.2 if sharp else 0.0, metal=metal, hu_offset=nuisances.hu_offset)
        exams.append(Exam(info, patient_v2(seed, index, nuisances), nuisances.noise_hu, shift, blur, pose, finish,
                          nuisances))
    return exams


def _plan_v3(seed: int, index: int, first, first_noise: float, studies: int, overrides, modality,
             slices: int) -> list[Exam]:
    """Phantom v3: phantom v2's exams with its liver lesions replaced by the lesions of
    :func:`.lesions.draw_lesions` (the same in every exam of the patient)."""
    exams = _plan_v2(seed, index, first, first_noise, studies, overrides, modality, slices)
    exams = [replace(exam, patient=replace(exam.patient, lesions=[]), nuisances=replace(exam.nuisances, lesions=[]))
             for exam in exams]
    lesions = draw_lesions(seed, index, exams[0].patient, slices, first.slice_spacing_mm * slices)
    return [replace(exam, patient=replace(exam.patient, roi_lesions=lesions)) for exam in exams]


def _syntax(info, instance: int) -> str:
    """The transfer syntax of one file: the scanner's, except that in phantom v2 the RLE
    scanner's even-numbered files are JPEG-LS lossless (an archive that re-encoded part of a
    series, as PACS migrations do)."""
    syntax = info.scanner.syntax(info.compress)
    if info.kernel is not None and syntax == RLELossless and instance % 2 == 0:
        return JPEGLSLossless
    return syntax


def _write_study(series_dir: Path, seed: int, index: int, exam: Exam, slices: int) -> tuple[list[WrittenSlice], dict]:
    """Write one series; slice ``i`` lies at body position ``z = (i + 0.5) / slices + shift``."""
    info, patient, shift = exam.info, exam.patient, exam.shift
    scanner = info.scanner
    template = series_template(info)
    renderer = SliceRenderer(patient, info.size, exam.pose, exam.finish)
    series_dir.mkdir(parents=True)
    span = info.slice_spacing_mm * slices
    study = info.study_index
    written = []
    for i in range(slices):
        z = (i + 0.5) / slices + shift
        z_mm = info.top_mm - z * span
        label = patient.label_at(z)
        parts = [seed, index, i, 0x4015E] + ([study] if study else [])
        rendered = renderer.render(z, noise_hu=exam.noise, blur_px=exam.blur_px, rng=np.random.default_rng(parts))
        masks, boxes = lesion_truth(rendered.masks, patient.roi_lesions) if patient.roi_lesions else (rendered.masks, [])
        stored = mr_intensity(rendered.hu, info.mr) if info.mr else to_stored(rendered.hu, scanner)
        ds = slice_dataset(info, template, i + 1, z_mm, "CHEST" if label == "thorax" else "ABDOMEN")
        path = series_dir / f"{i + 1:04d}.dcm"
        syntax = _syntax(info, i + 1)
        write_slice(path, ds, stored, syntax)
        truth = (series_dir.parent.parent.name, info.study_uid, info.series_uid, info.study_date, i + 1,
                 round(z, 6), round(z * span, 3), round(z_mm, 3), label)
        written.append(WrittenSlice(str(ds.SOPInstanceUID), label, path, pydicom.uid.UID(syntax).name,
                                    deflate_masks(masks), truth, study, "liver" in masks, "lesion" in masks,
                                    tuple(boxes)))
    labels = [w.label for w in written]
    description = {
        **info.to_dict(),
        "study_index": study,
        "z_shift": round(shift, 6),
        "noise_hu": round(exam.noise, 3),
        "blur_px": round(exam.blur_px, 4),
        "contrast": round(patient.contrast, 4),
        "level_boundaries_z": dict(zip(BOUNDARY_NAMES, (round(b, 5) for b in patient.boundaries))),
        "level_boundaries_mm": {name: round(info.top_mm - b * span, 3)
                                for name, b in zip(BOUNDARY_NAMES, patient.boundaries)},
        "labels": {label: labels.count(label) for label in LABELS},
        "organ_hu": {k: round(v, 2) for k, v in patient.hu.items()},
    }
    if exam.nuisances is not None:
        description["nuisances"] = exam.nuisances.to_dict()
        description["slices_with_liver"] = sum(w.has_liver for w in written)
        description["slices_with_lesion"] = sum(w.has_lesion for w in written)
    if patient.roi_lesions:
        description["lesions"] = [lesion.to_dict(span) for lesion in patient.roi_lesions]
    return written, description


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
                 compress: bool = True, workers: int = 0, *, studies_per_patient: int = 1, simple: bool = False,
                 overrides: dict | None = None, modality: str = "CT", version: int = VERSION) -> PhantomSummary:
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

    Phantom v3 (``version=3``; ``medcbir phantom OUT --v3``): phantom v2 (same patients, scanners,
    fields of view, contrast phases, MR option) whose liver lesions are replaced by 3–6 lesions per
    patient of four kinds (:data:`.lesions.KINDS`: cyst, hypervascular, ring-enhancing metastasis,
    calcified; told apart by their look, not their size), in the liver, spleen and kidneys, a few
    mm to several cm across (see :mod:`.lesions`). It also writes ``labels-lesion-kind.csv``
    (every slice: the kind of the lesion(s) it shows, ``none``, or ``mixed`` for two kinds),
    ``lesion-boxes.csv`` (``sop_instance_uid,frame,x,y,w,h,label``: one row per lesion per slice
    showing it, the box tight around its mask in the stored pixel grid, x = column and y = row of
    the top-left pixel; cross-sections under 2 px wide or high are not counted), and in masks.h5
    ``lesion-<kind>`` and ``lesion-id`` (the lesion's ``number`` + 1, see ``lesions`` in
    phantom.json) beside the organs; ``lesion`` holds every lesion shown and labels-lesion.csv
    follows it. The default (``version=2``) writes exactly what it wrote before v3 existed.

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
        simple: the original phantom (no nuisances, no lesions).
        overrides: nuisances forced for every patient (:func:`.variation.with_overrides`).
        modality: ``CT`` or ``MR`` (MR-like series).
        version: 2 (phantom v2) or 3 (phantom v3: lesion kinds, see above).

    Returns:
        A :class:`PhantomSummary`.

    Raises:
        ConfigError: bad parameters or an output folder holding something else.
    """
    _check(patients, slices, size, seed, studies_per_patient)
    if modality not in ("CT", "MR"):
        raise ConfigError(f"modality must be CT or MR (got {modality!r})")
    if simple and (overrides or modality != "CT"):
        raise ConfigError("overrides and modality need phantom v2 (not simple=True / --simple)")
    if version not in VERSIONS:
        raise ConfigError(f"phantom version must be one of {', '.join(map(str, VERSIONS))} (got {version!r})")
    if version == 3 and simple:
        raise ConfigError("phantom v3 (--v3) adds lesions to phantom v2: it cannot be simple (--simple)")
    if version == 3 and "lesions" in (overrides or {}):
        raise ConfigError("phantom v3 (--v3) draws its own lesions: the lesions override is for phantom v2")
    with_overrides(draw_nuisances(seed, 0, 400.0), overrides)  # bad overrides fail before any file is written
    out = Path(out)
    _prepare(out)
    parameters = {"patients": patients, "slices": slices, "size": size, "compress": compress,
                  "studies_per_patient": studies_per_patient, "simple": simple, "modality": modality,
                  "overrides": _jsonable(overrides or {})}
    v3 = version == 3
    # Written first and replaced at the end: an interrupted run leaves a description listing the
    # folders it may have written, so re-running into the same folder can clean them up.
    _write_json(out / "phantom.json", {
        "format": FORMAT, "version": version, "complete": False, "seed": seed, "parameters": parameters,
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

    datasets = ORGANS + MASK_NAMES if v3 else ORGANS
    mask_attrs = {"format": FORMAT, "version": version, "seed": seed, "organs": list(datasets)}
    if v3:
        mask_attrs["lesion_kinds"] = list(KINDS)
    jobs = [(out, seed, index, int(order[index % len(SCANNERS)]), slices, size, compress, studies_per_patient,
             simple, overrides, modality, version) for index in range(patients)]
    liver_rows: list[tuple[str, int, str]] = []
    lesion_rows: list[tuple[str, int, str]] = []
    kind_rows: list[tuple[str, int, str]] = []
    box_rows: list[tuple] = []
    with MaskWriter(out / "masks.h5", size, mask_attrs) as masks_file:
        for written, patient_description in _patients(jobs, workers):
            for item in written:
                masks_file.add(item.sop_instance_uid, datasets, item.masks,
                               {"label": item.label, "path": item.path.relative_to(out).as_posix()})
                if v3:
                    kind_rows.append((item.sop_instance_uid, 0, kind_label({box[1] for box in item.boxes})))
                    box_rows += [(item.sop_instance_uid, 0, *box[2:], box[1]) for box in item.boxes]
                rows.append((item.sop_instance_uid, 0, item.label))
                truth_rows.append((item.sop_instance_uid, 0, *item.truth))
                labels_count[item.label] += 1
                syntax_count[item.syntax_name] = syntax_count.get(item.syntax_name, 0) + 1
                dicom_files.append(item.path)
            description.append(patient_description)
            if not simple:
                liver, lesion = _presence_rows(seed, patient_description["index"], written)
                liver_rows += liver
                lesion_rows += lesion

    _write_csv(out / "labels.csv", ("sop_instance_uid", "frame", "label"), rows)
    _write_csv(out / "slices.csv", SLICES_COLUMNS, truth_rows)
    if not simple:
        _write_csv(out / "labels-liver.csv", ("sop_instance_uid", "frame", "label"), liver_rows)
        _write_csv(out / "labels-lesion.csv", ("sop_instance_uid", "frame", "label"), lesion_rows)
    if v3:
        _write_csv(out / LESION_KIND_CSV, ("sop_instance_uid", "frame", "label"), kind_rows)
        _write_csv(out / LESION_BOXES_CSV, BOX_COLUMNS, box_rows)
    manifest = {
        "format": FORMAT,
        "version": version,
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
    if v3:
        manifest["lesion_kinds"] = list(KINDS)
    _write_json(out / "phantom.json", manifest)
    elapsed = time.perf_counter() - started
    return PhantomSummary(
        out=out, patients=patients, slices=slices, size=size, seed=seed, files=len(rows),
        labels=labels_count, transfer_syntaxes=syntax_count, elapsed=elapsed,
        labels_csv=out / "labels.csv", masks_h5=out / "masks.h5", phantom_json=out / "phantom.json",
        dicom_files=dicom_files, studies_per_patient=studies_per_patient, slices_csv=out / "slices.csv",
        labels_liver_csv=None if simple else out / "labels-liver.csv",
        labels_lesion_csv=None if simple else out / "labels-lesion.csv", simple=simple, modality=modality,
        version=version, labels_lesion_kind_csv=out / LESION_KIND_CSV if v3 else None,
        lesion_boxes_csv=out / LESION_BOXES_CSV if v3 else None,
        lesion_kinds={kind: sum(row[-1] == kind for row in box_rows) for kind in KINDS} if v3 else {},
    )


LIVER_SAMPLE = 5  # slices with liver and without, per series (the seed paper's protocol)


def _presence_rows(seed: int, index: int, written: list[WrittenSlice]) -> tuple[list, list]:
    """labels-liver.csv rows (per series 5 slices showing liver and 5 not, drawn from the seed;
    fewer when a series has fewer) and labels-lesion.csv rows (every slice showing liver:
    ``lesion`` when a lesion shows, else ``no-lesion``), in file order."""
    liver, lesion = [], []
    by_study: dict[int, list[WrittenSlice]] = {}
    for item in written:
        by_study.setdefault(item.study, []).append(item)
    for study, items in by_study.items():
        rng = np.random.default_rng([seed, index, study, 0x11BE])
        chosen = set()
        for present in (True, False):
            pool = [i for i, item in enumerate(items) if item.has_liver == present]
            take = min(LIVER_SAMPLE, len(pool))
            chosen |= {pool[j] for j in rng.choice(len(pool), size=take, replace=False)} if take else set()
        liver += [(items[i].sop_instance_uid, 0, "liver" if items[i].has_liver else "no-liver") for i in sorted(chosen)]
        lesion += [(item.sop_instance_uid, 0, "lesion" if item.has_lesion else "no-lesion") for item in items
                   if item.has_liver]
    return liver, lesion


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
