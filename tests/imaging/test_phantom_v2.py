"""Phantom v2: its label files agree with the masks, every nuisance is recorded in phantom.json and
is what the DICOM files show, lesions behave by kind and phase, overrides and MR-like series."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from medcbir.errors import ConfigError
from medcbir.imaging import read_dicom
from medcbir.imaging.phantom import LABELS, make_archive
from medcbir.imaging.phantom.variation import LESION_KINDS, NUISANCE_NAMES, draw_nuisances


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def v2(phantom_archive) -> dict:
    """The shared archive (phantom v2, 4 patients × 20 slices, 128 px): headers, masks, truth."""
    description = json.loads((phantom_archive / "phantom.json").read_text())
    truth = {r["sop_instance_uid"]: r for r in read_csv(phantom_archive / "slices.csv")}
    slices = {}
    with h5py.File(phantom_archive / "masks.h5", "r") as masks:
        for uid, row in truth.items():
            group = masks[uid]
            path = phantom_archive / group.attrs["path"]
            slices[uid] = {"row": row, "path": path, "header": pydicom.dcmread(path, stop_before_pixels=True),
                           "liver": group["liver"][()].astype(bool), "lesion": group["lesion"][()].astype(bool)}
    return {"root": phantom_archive, "description": description, "slices": slices}


def test_the_default_archive_is_v2(v2):
    assert v2["description"]["version"] == 2 and v2["description"]["parameters"]["simple"] is False
    assert all("nuisances" in p for p in v2["description"]["patients"])


def test_liver_labels_follow_the_seed_papers_protocol(v2):
    """labels-liver.csv: per series 5 slices showing liver and 5 not (the rest absent), labels
    equal to what the liver mask shows."""
    rows = read_csv(v2["root"] / "labels-liver.csv")
    assert list(rows[0]) == ["sop_instance_uid", "frame", "label"]
    per_series = defaultdict(Counter)
    for row in rows:
        s = v2["slices"][row["sop_instance_uid"]]
        assert row["frame"] == "0"
        assert row["label"] == ("liver" if s["liver"].any() else "no-liver")
        per_series[s["row"]["series_instance_uid"]][row["label"]] += 1
    assert len(per_series) == 4
    assert all(counts == {"liver": 5, "no-liver": 5} for counts in per_series.values()), per_series
    assert len({r["sop_instance_uid"] for r in rows}) == len(rows) == 40


def test_lesion_labels_and_masks(v2):
    """labels-lesion.csv: every slice showing liver, ``lesion`` iff the lesion mask is non-empty;
    lesion masks lie inside the liver; the archive has lesions."""
    rows = read_csv(v2["root"] / "labels-lesion.csv")
    with_liver = {uid for uid, s in v2["slices"].items() if s["liver"].any()}
    assert {r["sop_instance_uid"] for r in rows} == with_liver and len(rows) == len(with_liver)
    for row in rows:
        s = v2["slices"][row["sop_instance_uid"]]
        assert row["label"] == ("lesion" if s["lesion"].any() else "no-lesion")
    for s in v2["slices"].values():
        assert not np.any(s["lesion"] & ~s["liver"])  # a lesion is part of the liver mask
    labels = Counter(r["label"] for r in rows)
    assert labels["lesion"] >= 3 and labels["no-lesion"] >= 3, labels


def test_lesions_have_the_contrast_of_their_kind_and_phase(v2):
    """In the pixels medcbir.imaging reads: metastases darker than the liver around them, cysts
    near water, hypervascular lesions brighter than the liver in the arterial phase only."""
    patients = {p["series_instance_uid"]: p for p in v2["description"]["patients"]}
    seen = set()
    for s in v2["slices"].values():
        if s["lesion"].sum() < 12:
            continue
        patient = patients[s["row"]["series_instance_uid"]]
        hu = read_dicom(s["path"])[0].pixels
        lesion_hu = float(np.median(hu[s["lesion"]]))
        liver_hu = float(np.median(hu[s["liver"] & ~s["lesion"]]))
        kinds = {lesion["kind"] for lesion in patient["nuisances"]["lesions"]}
        phase = patient["nuisances"]["phase"]
        if kinds == {"metastasis"}:
            assert lesion_hu < liver_hu - 12, (lesion_hu, liver_hu)
        if kinds == {"cyst"}:
            assert -20 < lesion_hu < 30
        if kinds == {"hyperdense"} and phase == "arterial":
            assert lesion_hu > liver_hu + 25
        seen |= kinds
    assert seen, "no slice with a sizeable lesion"


def test_every_nuisance_is_recorded_and_is_what_the_files_show(v2):
    for patient in v2["description"]["patients"]:
        nuisances = patient["nuisances"]
        assert set(NUISANCE_NAMES) <= set(nuisances)
        headers = [s["header"] for s in v2["slices"].values() if s["row"]["patient"] == patient["folder"]]
        assert len(headers) == 20
        for h in headers:
            assert float(h.PixelSpacing[0]) == pytest.approx(nuisances["pixel_spacing"] * 512 / 128, rel=1e-4)
            assert float(h.SliceThickness) == pytest.approx(nuisances["slice_thickness_mm"], abs=1e-3)
            assert ("CONTRAST" in h.SeriesDescription) == (nuisances["phase"] == "non-contrast")
            assert ("ContrastBolusAgent" in h) == (nuisances["phase"] != "non-contrast")
            assert (str(h.ConvolutionKernel) == patient["scanner"]["kernel"]) == (nuisances["kernel"] == "soft")
        assert patient["slices_with_liver"] == sum(s["liver"].any() for s in v2["slices"].values()
                                                   if s["row"]["patient"] == patient["folder"])


def test_nuisances_cover_their_ranges_over_many_patients():
    """Drawn without rendering, 300 patients: each nuisance varies over its stated range."""
    drawn = [draw_nuisances(3, i, 420.0) for i in range(300)]
    spacing = [n.pixel_spacing for n in drawn]
    assert 0.6 <= min(spacing) < 0.65 and 0.9 < max(spacing) <= 0.95
    volume = [n.liver_volume for n in drawn]
    assert 0.7 <= min(volume) < 0.75 and 1.25 < max(volume) <= 1.3
    assert {n.phase for n in drawn} == {"non-contrast", "arterial", "portal-venous"}
    assert {n.kernel for n in drawn} == {"soft", "sharp"}
    assert {n.arms_in_fov for n in drawn} == {True, False} and {n.table for n in drawn} == {True, False}
    assert {n.slice_thickness_mm for n in drawn} == {1.0, 1.25, 2.0, 2.5, 3.0, 5.0}
    assert 0.05 < np.mean([n.metal is not None for n in drawn]) < 0.3
    assert {lesion["kind"] for n in drawn for lesion in n.lesions} == set(LESION_KINDS)
    assert max(abs(n.rotation_deg) for n in drawn) > 4 and max(abs(n.offset_mm[0]) for n in drawn) > 20
    fat = [n.fat_fraction for n in drawn]
    assert max(fat) - min(fat) > 0.15
    assert len({n.noise_hu for n in drawn}) == 300


def body_centroid(masks: h5py.File, uid: str) -> np.ndarray:
    body = masks[uid]["body"][()].astype(bool)
    rows, cols = np.nonzero(body)
    return np.array([cols.mean(), rows.mean()])


def test_overrides_apply_to_every_patient(tmp_path):
    """Same patients, controlled nuisances: field of view, offset (the body moves by it in mm),
    noise and calibration offset are what was asked, for every patient."""
    base = {"rotation_deg": 0.0, "offset_mm": (0, 0), "pixel_spacing": 0.9, "metal": None, "kernel": "soft"}
    plain = make_archive(tmp_path / "plain", patients=3, slices=3, seed=2, size=96, overrides=base)
    moved = make_archive(tmp_path / "moved", patients=3, slices=3, seed=2, size=96,
                         overrides={**base, "offset_mm": (20, -10), "noise": 25, "hu_offset": 40})
    description = json.loads(moved.phantom_json.read_text())
    assert description["parameters"]["overrides"]["noise"] == 25
    for patient in description["patients"]:
        n = patient["nuisances"]
        assert n["pixel_spacing"] == 0.9 and n["offset_mm"] == [20, -10] and n["noise_hu"] == 25 and n["hu_offset"] == 40
    spacing = 0.9 * 512 / 96
    with h5py.File(plain.masks_h5) as a, h5py.File(moved.masks_h5) as b:
        for row_a, row_b in zip(read_csv(plain.labels_csv), read_csv(moved.labels_csv)):
            shift = body_centroid(b, row_b["sop_instance_uid"]) - body_centroid(a, row_a["sop_instance_uid"])
            np.testing.assert_allclose(shift, [20 / spacing, -10 / spacing], atol=0.6)
    for path in moved.dicom_files:
        h = pydicom.dcmread(path, stop_before_pixels=True)
        assert float(h.PixelSpacing[0]) == pytest.approx(spacing, rel=1e-4)
    # Air far from the body and the table: −1000 HU + 40, noise 25 HU.
    hu = read_dicom(moved.dicom_files[0])[0].pixels
    corner = hu[:10, :10]
    assert abs(float(np.mean(corner)) - (-960)) < 10 and 21 < float(np.std(corner)) < 29
    with pytest.raises(ConfigError, match="unknown phantom override"):
        make_archive(tmp_path / "bad", patients=1, slices=1, size=32, overrides={"nois": 3})
    with pytest.raises(ConfigError, match="phase"):
        make_archive(tmp_path / "bad2", patients=1, slices=1, size=32, overrides={"phase": "late"})


def test_mr_like_series(tmp_path):
    summary = make_archive(tmp_path / "mr", patients=6, slices=2, seed=4, size=48, modality="MR")
    description = json.loads(summary.phantom_json.read_text())
    windows = set()
    scales = set()
    for patient in description["patients"]:
        mr = patient["mr"]
        scales.add(mr["scale"])
        folder = summary.out / patient["folder"]
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
            assert "RescaleIntercept" not in ds and "RescaleType" not in ds and int(ds.PixelRepresentation) == 0
            assert ("WindowCenter" in ds) == bool(mr["windows"])
            windows.add("WindowCenter" in ds)
            item = read_dicom(path)[0]
            assert item.meta.modality == "MR"
            assert 0 <= float(item.pixels.min()) and float(item.pixels.max()) <= mr["scale"] + 1
    assert windows == {True, False} and len(scales) == 6
    with pytest.raises(ConfigError, match="modality"):
        make_archive(tmp_path / "x", patients=1, slices=1, size=32, modality="PET")
    with pytest.raises(ConfigError, match="v2"):
        make_archive(tmp_path / "y", patients=1, slices=1, size=32, simple=True, modality="MR")


def test_simple_phantom_has_no_v2_files(tmp_path):
    summary = make_archive(tmp_path / "s", patients=2, slices=2, seed=1, size=32, simple=True)
    names = sorted(p.name for p in summary.out.iterdir() if p.is_file())
    assert names == ["labels.csv", "masks.h5", "phantom.json", "slices.csv"]
    assert all(set(r["label"] for r in read_csv(summary.labels_csv)) <= set(LABELS) for _ in [0])
