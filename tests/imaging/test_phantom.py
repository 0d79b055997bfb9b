"""The phantom archive: HU per organ read back through medcbir.imaging, ground truth consistent with
the DICOM files, every level label, real scanner variations, determinism, speed, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from scipy.ndimage import gaussian_filter

from medcbir.errors import ConfigError
from medcbir.imaging import read_dicom
from medcbir.imaging.phantom import HU_RANGES, LABELS, ORGANS, Patient, make_archive
from medcbir.imaging.phantom.anatomy import CONTRACT_ORGANS, Blob
from medcbir.imaging.phantom.slices import _Outlines, blur, rasterize
from medcbir.imaging.phantom.writer import patient_folder

CONTRACT_ORGAN_NAMES = {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "spine", "lung_left",
                        "lung_right", "body", "bowel_gas"}
# Organs that only exist at some levels, and the labels at which they must (and only may) appear.
LEVEL_ORGANS = {
    "liver": {"liver-dome", "liver-kidney"},
    "kidney": {"liver-kidney", "kidney"},
}


def dicom_files(archive: Path) -> list[Path]:
    return sorted(archive.rglob("*.dcm"))


def read_labels(archive: Path) -> list[dict]:
    with open(archive / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def simple_archive(tmp_path_factory) -> Path:
    """The original phantom (``simple=True``): 4 patients × 20 slices at 128 px, seed 7."""
    out = tmp_path_factory.mktemp("simple") / "archive"
    make_archive(out, patients=4, slices=20, seed=7, size=128, simple=True)
    return out


@pytest.fixture(scope="module")
def slices(simple_archive) -> list[dict]:
    """Every slice of the original phantom: HU via medcbir.imaging, masks, label, header."""
    phantom_archive = simple_archive
    out = []
    with h5py.File(phantom_archive / "masks.h5", "r") as masks:
        for path in dicom_files(phantom_archive):
            items = read_dicom(path)
            header = pydicom.dcmread(path, stop_before_pixels=True)
            group = masks[str(header.SOPInstanceUID)]
            out.append({
                "path": path,
                "hu": items[0].pixels,
                "meta": items[0].meta,
                "header": header,
                "label": group.attrs["label"],
                "masks": {organ: group[organ][()] for organ in group},
            })
    return out


def test_contract_organ_list_is_complete():
    assert set(CONTRACT_ORGANS) == CONTRACT_ORGAN_NAMES
    assert set(CONTRACT_ORGANS) <= set(ORGANS)


def test_organ_hu_medians_within_their_ranges(slices):
    """Each tissue's median HU, read back through medcbir.imaging, lies in its clinical range —
    over the whole archive and in every patient that has at least 30 pixels of it."""
    pooled: dict[str, list[np.ndarray]] = defaultdict(list)
    per_patient: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for s in slices:
        patient = str(s["header"].PatientID)
        regions = {organ: s["masks"][organ].astype(bool) for organ in HU_RANGES if organ != "air"}
        regions["air"] = ~s["masks"]["body"].astype(bool)
        for organ, mask in regions.items():
            pooled[organ].append(s["hu"][mask])
            per_patient[(organ, patient)].append(s["hu"][mask])
    failures = []
    for organ, (lo, hi) in HU_RANGES.items():
        values = np.concatenate(pooled[organ])
        assert values.size > 100, f"{organ} never appears in the archive"
        median = float(np.median(values))
        if not lo <= median <= hi:
            failures.append(f"{organ}: pooled median {median:.0f} not in [{lo:.0f}, {hi:.0f}]")
    for (organ, patient), chunks in per_patient.items():
        values = np.concatenate(chunks)
        lo, hi = HU_RANGES[organ]
        if values.size >= 30 and not lo <= float(np.median(values)) <= hi:
            failures.append(f"{organ} in {patient}: median {np.median(values):.0f} not in [{lo:.0f}, {hi:.0f}]")
    assert not failures, "\n".join(failures)


def test_hu_has_noise_and_blur(slices):
    """Inside a large homogeneous organ the noise is 10–20 HU; edges are blurred (intermediate values)."""
    for s in slices:
        liver = s["masks"]["liver"].astype(bool)
        # Erode by two pixels so the blurred border does not count as noise.
        core = liver[2:-2, 2:-2] & liver[:-4, 2:-2] & liver[4:, 2:-2] & liver[2:-2, :-4] & liver[2:-2, 4:]
        if core.sum() > 200:
            std = float(np.std(s["hu"][2:-2, 2:-2][core]))
            assert 7.0 <= std <= 25.0, (s["path"], std)
    hu = slices[0]["hu"]
    body = slices[0]["masks"]["body"].astype(bool)
    border = body & ~np.roll(body, 1, axis=1)  # skin pixels on the right-hand side of air
    assert np.any((hu[border] > -900) & (hu[border] < -200)), "no partial-volume pixels at the skin"


def test_ground_truth_matches_the_dicom_files(simple_archive, slices):
    rows = read_labels(simple_archive)
    assert list(rows[0]) == ["sop_instance_uid", "frame", "label"]
    csv_uids = [r["sop_instance_uid"] for r in rows]
    file_uids = [str(s["header"].SOPInstanceUID) for s in slices]
    assert len(set(csv_uids)) == len(csv_uids) == len(file_uids) == 4 * 20
    assert set(csv_uids) == set(file_uids)
    assert all(r["frame"] == "0" and r["label"] in LABELS for r in rows)
    by_uid = {r["sop_instance_uid"]: r["label"] for r in rows}
    with h5py.File(simple_archive / "masks.h5", "r") as masks:
        assert set(masks) == set(file_uids)
        for s in slices:
            uid = str(s["header"].SOPInstanceUID)
            assert by_uid[uid] == s["label"]
            assert s["meta"].sop_instance_uid == uid and s["meta"].frame == 0
            assert (simple_archive / masks[uid].attrs["path"]).resolve() == s["path"].resolve()
            assert set(s["masks"]) == set(ORGANS)
            for organ in ORGANS:
                dataset = masks[uid][organ]
                assert dataset.dtype == np.uint8 and dataset.shape == (128, 128)
                assert dataset.compression == "gzip"
            assert set(np.unique(s["masks"]["body"])) == {0, 1}
            # Organs lie inside the body, and the exclusive organ masks never overlap.
            body = s["masks"]["body"].astype(bool)
            stack = np.stack([s["masks"][o] for o in ORGANS if o not in ("body", "lesion")]).astype(int)
            assert stack.sum(axis=0).max() <= 1
            assert not np.any(stack.any(axis=0) & ~body)


def test_every_label_in_every_patient_in_body_order(slices):
    series: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for s in slices:
        series[str(s["header"].SeriesInstanceUID)].append((int(s["header"].InstanceNumber), s["label"]))
    assert len(series) == 4
    for labels in series.values():
        ordered = [label for _, label in sorted(labels)]
        assert set(ordered) == set(LABELS)
        # Top to bottom: labels appear in anatomical order, each as one contiguous run.
        runs = [label for i, label in enumerate(ordered) if i == 0 or ordered[i - 1] != label]
        assert runs == list(LABELS)


def test_masks_agree_with_level_labels(slices):
    for s in slices:
        m, label = s["masks"], s["label"]
        has_liver = bool(m["liver"].any())
        has_kidney = bool(m["kidney_left"].any() or m["kidney_right"].any())
        assert has_liver == (label in LEVEL_ORGANS["liver"]), (s["path"], label)
        assert has_kidney == (label in LEVEL_ORGANS["kidney"]), (s["path"], label)
        if label == "thorax":
            assert m["lung_left"].any() and m["lung_right"].any()
        if label == "pelvis":
            assert m["pelvic_bone"].any() and not (m["lung_left"].any() or m["lung_right"].any())
        assert m["spine"].any() and m["body"].any()
    hearts = {str(s["header"].PatientID) for s in slices if s["masks"]["heart"].any()}
    assert len(hearts) == 4, "every patient's thorax shows the heart"


def test_phantom_json_boundaries_reproduce_the_labels_and_vary_per_patient(slices, simple_archive):
    """Labels follow from the per-patient boundaries (in mm) recorded in phantom.json."""
    description = json.loads((simple_archive / "phantom.json").read_text())
    patients = {p["patient_id"]: p for p in description["patients"]}
    names = ("liver_top", "kidney_top", "liver_bottom", "kidney_bottom")
    for s in slices:
        bounds = patients[str(s["header"].PatientID)]["level_boundaries_mm"]
        z = float(s["header"].ImagePositionPatient[2])
        # Head first: z (mm) decreases down the body, so a level starts below its boundary.
        level = sum(z < bounds[name] for name in names)
        assert LABELS[level] == s["label"], (s["path"], z, bounds)
    boundary_sets = {tuple(p["level_boundaries_z"][n] for n in names) for p in patients.values()}
    assert len(boundary_sets) == 4
    assert len({p["fov_mm"] for p in patients.values()}) == 4
    assert len({p["scanner"]["manufacturer"] for p in patients.values()}) == 4
    # Anatomy differs between patients beyond the boundaries: body area on the same label differs.
    areas = defaultdict(list)
    for s in slices:
        if s["label"] == "kidney":
            areas[str(s["header"].PatientID)].append(int(s["masks"]["body"].sum()))
    means = sorted(np.mean(v) for v in areas.values())
    assert means[-1] > 1.05 * means[0]


@pytest.mark.parametrize("slices_per_series", [10, 11, 13, 17, 20, 32])
def test_label_rule_covers_every_level_for_many_seeds(slices_per_series):
    """The z rule alone (no rendering): ≥ 10 slices reach every label for any seed."""
    for seed in range(60):
        for index in range(3):
            patient = Patient.draw(seed, index)
            labels = {patient.label_at((i + 0.5) / slices_per_series) for i in range(slices_per_series)}
            assert labels == set(LABELS), (seed, index, patient.boundaries)


def test_dicom_headers_are_realistic(slices, simple_archive):
    by_series = defaultdict(list)
    for s in slices:
        h = s["header"]
        assert h.Modality == "CT" and h.SOPClassUID == pydicom.uid.CTImageStorage
        assert h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID
        assert h.BodyPartExamined == ("CHEST" if s["label"] == "thorax" else "ABDOMEN")
        assert h.Rows == h.Columns == 128 and h.SamplesPerPixel == 1
        assert h.PhotometricInterpretation == "MONOCHROME2"
        assert float(h.PixelSpacing[0]) == pytest.approx(float(h.ReconstructionDiameter) / 128, rel=1e-4)
        assert [float(v) for v in h.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        for uid in (h.SOPInstanceUID, h.SeriesInstanceUID, h.StudyInstanceUID, h.FrameOfReferenceUID):
            assert pydicom.uid.UID(uid).is_valid
        assert h.KVP and h.Manufacturer and h.StudyDate and h.WindowCenter is not None
        assert str(h.PatientID).startswith("PHANTOM-7-")
        by_series[str(h.SeriesInstanceUID)].append(h)
    studies = set()
    for headers in by_series.values():
        headers.sort(key=lambda h: int(h.InstanceNumber))
        assert [int(h.InstanceNumber) for h in headers] == list(range(1, 21))
        z = np.array([float(h.ImagePositionPatient[2]) for h in headers])
        steps = -np.diff(z)  # from the head down: z decreases
        assert np.allclose(steps, float(headers[0].SliceThickness), atol=2e-3)
        assert len({str(h.StudyInstanceUID) for h in headers}) == 1
        studies.add(str(headers[0].StudyInstanceUID))
    assert len(studies) == 4
    description = json.loads((simple_archive / "phantom.json").read_text())
    assert description["seed"] == 7 and len(description["patients"]) == 4
    assert {p["series_instance_uid"] for p in description["patients"]} == set(by_series)


def test_scanner_variations_are_really_present(slices):
    """Both intercepts/signedness, 12 and 16 bits, implicit and explicit VR, RLE and JPEG 2000."""
    headers = [s["header"] for s in slices]
    assert {int(h.RescaleIntercept) for h in headers} == {-1024, 0}
    assert {(int(h.RescaleIntercept), int(h.PixelRepresentation)) for h in headers} == {(-1024, 0), (0, 1)}
    assert {int(h.BitsStored) for h in headers} == {12, 16}
    syntaxes = Counter(str(h.file_meta.TransferSyntaxUID) for h in headers)
    assert set(syntaxes) == {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless}
    assert len({str(h.Manufacturer) for h in headers}) == 4
    # The transfer syntax really is what the file is: implicit VR files carry no VRs on disk.
    implicit = next(s["path"] for s in slices if str(s["header"].file_meta.TransferSyntaxUID) == ImplicitVRLittleEndian)
    assert pydicom.dcmread(implicit).is_implicit_VR
    # Stored values respect BitsStored, and signed scanners store negative numbers for air.
    for s in slices[::7]:
        ds = pydicom.dcmread(s["path"])
        raw = ds.pixel_array
        bits = int(ds.BitsStored)
        if int(ds.PixelRepresentation):
            assert raw.min() >= -(1 << (bits - 1)) and raw.max() < (1 << (bits - 1)) and raw.min() < 0
        else:
            assert raw.min() >= 0 and raw.max() < (1 << bits)
        # Independent oracle: pydicom's own decode + rescale equals medcbir's HU.
        np.testing.assert_array_equal(raw.astype(np.float32) + float(ds.RescaleIntercept), s["hu"])


def test_compressed_files_decode_identically_in_independent_decoders(slices, tmp_path):
    """The compressed series are standard: GDCM decodes our JPEG 2000, pydicom's own RLE decoder
    and dcmtk's dcmdrle decode our RLE, all to the pixels medcbir.imaging reads."""
    from pydicom.pixels import pixel_array

    from tests.conftest import require_binary

    by_syntax = {}
    for s in slices:
        by_syntax.setdefault(str(s["header"].file_meta.TransferSyntaxUID), s)
    j2k, rle = by_syntax[JPEG2000Lossless], by_syntax[RLELossless]
    intercept = {id(x): float(x["header"].RescaleIntercept) for x in (j2k, rle)}
    np.testing.assert_array_equal(pixel_array(j2k["path"], decoding_plugin="gdcm") + intercept[id(j2k)], j2k["hu"])
    np.testing.assert_array_equal(pixel_array(rle["path"], decoding_plugin="pydicom") + intercept[id(rle)], rle["hu"])
    dcmdrle = require_binary("dcmdrle")
    plain = tmp_path / "plain.dcm"
    subprocess.run([dcmdrle, str(rle["path"]), str(plain)], check=True, capture_output=True, timeout=60)
    decoded = pydicom.dcmread(plain)
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(decoded.pixel_array + intercept[id(rle)], rle["hu"])


def archive_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_archive(tmp_path / "a", patients=4, slices=3, seed=11, size=64)
    # The same seed again, through the CLI in another process with another hash seed.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([str(Path(sys.executable).parent / "medcbir"), "phantom", str(tmp_path / "b"), "--patients", "4",
                    "--slices", "3", "--seed", "11", "--size", "64"], check=True, env=env, capture_output=True, timeout=120)
    c = make_archive(tmp_path / "c", patients=4, slices=3, seed=12, size=64)
    bytes_a, bytes_b, bytes_c = (archive_bytes(root) for root in (a.out, tmp_path / "b", c.out))
    # + labels.csv, labels-liver.csv, labels-lesion.csv, slices.csv, masks.h5, phantom.json
    assert len(bytes_a) == 4 * 3 + 6
    assert bytes_a == bytes_b  # every DICOM file and ground-truth file
    dicom_a = {k: v for k, v in bytes_a.items() if k.endswith(".dcm")}
    dicom_c = {k: v for k, v in bytes_c.items() if k.endswith(".dcm")}
    assert not set(dicom_a) & set(dicom_c)  # patient IDs (folders) carry the seed
    assert set(dicom_a.values()).isdisjoint(dicom_c.values())
    uids_a = {r["sop_instance_uid"] for r in read_labels(a.out)}
    uids_c = {r["sop_instance_uid"] for r in read_labels(c.out)}
    assert not uids_a & uids_c


def test_blur_matches_scipy_gaussian_filter():
    image = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32) * 300
    for sigma in (0.5, 0.8, 1.7):
        expected = gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
        np.testing.assert_allclose(blur(image, sigma), expected, atol=1e-3)


@pytest.mark.parametrize("blob", [
    Blob(0.1, -0.2, 0.5, 0.3, 0.4),
    Blob(-0.3, 0.1, 0.2, 0.35, -1.0, ((2, 0.1, 0.3), (3, 0.05, 1.0))),
    Blob(0.9, 0.9, 0.3, 0.3),  # partly outside the image
])
def test_rasterize_agrees_with_a_brute_force_point_test(blob):
    """Window-limited, concentric-reusing rasterisation vs the definition on every pixel centre."""
    size = 96
    c = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    u = ((x - blob.cx) * np.cos(blob.angle) + (y - blob.cy) * np.sin(blob.angle)) / blob.ax
    v = ((y - blob.cy) * np.cos(blob.angle) - (x - blob.cx) * np.sin(blob.angle)) / blob.ay
    radius = 1 + sum(a * np.cos(k * np.arctan2(v, u) + ph) for k, a, ph in blob.harmonics)
    expected = u**2 + v**2 < radius**2
    mismatched = rasterize(blob, size) != expected
    assert mismatched.sum() <= 2  # float32 grid vs float64 here: only boundary ties may differ
    outlines = _Outlines(size)
    outlines.inside(blob)
    window, inside = outlines.inside(blob.scaled(0.6))
    full = np.zeros((size, size), dtype=bool)
    full[window] = inside
    assert (full != rasterize(blob.scaled(0.6), size)).sum() <= 2


def test_no_compress_writes_only_uncompressed_syntaxes(tmp_path):
    summary = make_archive(tmp_path / "plain", patients=4, slices=2, seed=3, size=48, compress=False)
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in summary.dicom_files}
    assert syntaxes == {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert summary.transfer_syntaxes == {"Explicit VR Little Endian": 6, "Implicit VR Little Endian": 2}


def test_a_256_pixel_archive_with_every_scanner(tmp_path, record_property):
    """256 px, four patients (every scanner profile: RLE and JPEG 2000 included). Speed is a
    benchmark, not a test (benchmarks/phantom.py, goal ≥ 100 slices/s on 2 cores); the rate is
    only recorded here."""
    wall = time.perf_counter()
    summary = make_archive(tmp_path / "speed", patients=4, slices=12, seed=5, size=256)
    record_property("phantom_slices_per_wall_second", round(summary.files / (time.perf_counter() - wall), 1))
    assert summary.files == 48 and len(summary.dicom_files) == 48
    assert len(read_labels(tmp_path / "speed")) == 48


def test_rewriting_replaces_a_previous_simple_archive(tmp_path):
    out = tmp_path / "archive"
    make_archive(out, patients=3, slices=2, seed=1, size=32)
    summary = make_archive(out, patients=1, slices=2, seed=2, size=32)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [patient_folder(2, 0)]
    assert len(dicom_files(out)) == 2 == summary.files
    assert len(read_labels(out)) == 2


def test_rerun_after_an_interrupted_run_cleans_up(tmp_path, monkeypatch):
    from medcbir.imaging.phantom import archive

    out = tmp_path / "archive"
    real_write, calls = archive.write_slice, []

    def dying_write(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[0])
        real_write(*args, **kwargs)

    monkeypatch.setattr(archive, "write_slice", dying_write)
    with pytest.raises(KeyboardInterrupt):
        make_archive(out, patients=3, slices=2, seed=8, size=32)
    assert len(dicom_files(out)) == 5 and json.loads((out / "phantom.json").read_text())["complete"] is False
    monkeypatch.setattr(archive, "write_slice", real_write)
    summary = make_archive(out, patients=1, slices=3, seed=8, size=32)
    assert dicom_files(out) == sorted(summary.dicom_files) and len(summary.dicom_files) == 3
    assert json.loads((out / "phantom.json").read_text())["complete"] is True


@pytest.mark.parametrize("kwargs, message", [
    ({"patients": 0}, "patients"),
    ({"slices": 0}, "slices"),
    ({"size": 8}, "size"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters_raise_config_error(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_archive(tmp_path / "x", **kwargs)


def test_refuses_a_folder_holding_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        make_archive(tmp_path, patients=1, slices=1, size=32)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make_archive(tmp_path / "file", patients=1, slices=1, size=32)


def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path):
    """Patients rendered in worker processes: same files, same masks.h5, byte for byte."""
    one = make_archive(tmp_path / "one", patients=3, slices=10, seed=11, size=64, workers=1)
    two = make_archive(tmp_path / "two", patients=3, slices=10, seed=11, size=64, workers=2)
    files_one = sorted(p.relative_to(one.out) for p in one.out.rglob("*") if p.is_file())
    files_two = sorted(p.relative_to(two.out) for p in two.out.rglob("*") if p.is_file())
    assert files_one == files_two and len(files_one) == 30 + 6
    for rel in files_one:
        assert (one.out / rel).read_bytes() == (two.out / rel).read_bytes(), rel


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("simple", [False, True])
def test_studies_per_patient_are_later_exams_of_the_same_anatomy(tmp_path, simple):
    """Several exams per patient: new UIDs, increasing dates, small FOV/table/range/contrast
    changes, the same anatomy (so the same level at the same body position), and slices.csv
    giving each slice's body position, consistent with its DICOM header."""
    summary = make_archive(tmp_path / "a", patients=2, slices=12, seed=5, size=48, studies_per_patient=3, simple=simple)
    assert summary.files == 2 * 3 * 12 and summary.studies_per_patient == 3
    truth = read_csv(summary.slices_csv)
    assert [r["sop_instance_uid"] for r in truth] == [r["sop_instance_uid"] for r in read_labels(summary.out)]
    description = json.loads(summary.phantom_json.read_text())
    headers = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in summary.dicom_files)}
    assert len(headers) == 72
    for entry in description["patients"]:
        patient = Patient.draw(5, entry["index"])
        exams = entry["studies"]
        assert [e["study_index"] for e in exams] == [0, 1, 2]
        assert len({e["study_instance_uid"] for e in exams}) == len({e["series_instance_uid"] for e in exams}) == 3
        dates = [e["study_date"] for e in exams]
        assert dates == sorted(dates) and len(set(dates)) == 3
        assert exams[0]["z_shift"] == 0 and all(0 < abs(e["z_shift"]) <= 0.03 for e in exams[1:])
        fovs = [e["fov_mm"] for e in exams]
        assert len(set(fovs)) == 3 and max(fovs) / min(fovs) < 1.09
        assert len({e["top_mm"] for e in exams}) == 3 and len({e["contrast"] for e in exams}) == 3
        rows = [r for r in truth if r["patient"] == entry["folder"]]
        assert len(rows) == 36
        for exam in exams:
            series = sorted((r for r in rows if r["study_instance_uid"] == exam["study_instance_uid"]),
                            key=lambda r: int(r["instance_number"]))
            assert [int(r["instance_number"]) for r in series] == list(range(1, 13))
            for i, row in enumerate(series):
                h = headers[row["sop_instance_uid"]]
                assert str(h.PatientID) == entry["patient_id"] and str(h.StudyDate) == exam["study_date"]
                assert str(h.SeriesInstanceUID) == exam["series_instance_uid"] == row["series_instance_uid"]
                z = float(row["z"])
                assert z == pytest.approx((i + 0.5) / 12 + exam["z_shift"], abs=1e-6)
                # Same anatomy in every exam: the level at a body position is the patient's.
                assert row["label"] == patient.label_at(z)
                assert float(h.SliceLocation) == pytest.approx(float(row["slice_location_mm"]), abs=1e-3)
                assert float(row["z_mm"]) == pytest.approx(z * 12 * exam["slice_spacing_mm"], abs=2e-3)
            assert {r["label"] for r in series} == set(LABELS)


def test_first_exam_does_not_depend_on_the_number_of_exams(tmp_path):
    one = make_archive(tmp_path / "one", patients=2, slices=4, seed=9, size=32)
    two = make_archive(tmp_path / "two", patients=2, slices=4, seed=9, size=32, studies_per_patient=2)
    first = sorted(p.relative_to(one.out) for p in one.dicom_files)
    assert all((two.out / rel).read_bytes() == (one.out / rel).read_bytes() for rel in first)
    assert len(two.dicom_files) == 16


def test_no_file_path_reveals_patient_id_or_name(tmp_path):
    summary = make_archive(tmp_path / "a", patients=3, slices=2, seed=4, size=32, studies_per_patient=2)
    identifiers = set()
    for path in summary.dicom_files:
        h = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(h.PatientID), str(h.PatientName), *str(h.PatientName).split("^")}
    assert len(identifiers) == 3 + 3 + 1 + 3  # IDs, names, the shared family name, the given names
    ground_truth = {"labels.csv", "labels-liver.csv", "labels-lesion.csv", "slices.csv", "masks.h5", "phantom.json"}
    paths = [p.relative_to(summary.out).as_posix() for p in summary.out.rglob("*")]
    assert len(paths) == 3 + 3 * 2 + 3 * 2 + 12 + 6  # patients, studies, series, files, ground truth
    for rel in (p.upper() for p in paths if p not in ground_truth):
        assert not any(identifier.upper() in rel for identifier in identifiers), rel


def test_studies_per_patient_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="studies-per-patient"):
        make_archive(tmp_path / "x", patients=1, slices=1, size=32, studies_per_patient=0)
