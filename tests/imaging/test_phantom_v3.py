"""Phantom v3: lesions of four kinds in liver, spleen and kidneys; boxes tight around their masks,
per-slice kind labels that agree with them, lesions inside their organ, kinds that look different
in the pixels read back with pydicom (by contrast phase), the same lesion at another field of
view, and phantom v2 unchanged byte for byte."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medcbir.cli.main import main
from medcbir.errors import ConfigError
from medcbir.imaging.phantom import make_archive
from medcbir.imaging.phantom.anatomy import PHASES
from medcbir.imaging.phantom.lesions import KINDS, MASK_NAMES, draw_lesions
from medcbir.imaging.phantom.variation import draw_nuisances, patient_v2

GROUPS = ("liver", "spleen", "kidney")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def hu_of(path: Path) -> np.ndarray:
    """The slice's HU as pydicom decodes and rescales it."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def lesion_regions(root: Path) -> dict[tuple[str, int], dict]:
    """(sop uid, lesion number) → mask, kind, organ and the slice's file, from masks.h5 and
    phantom.json."""
    description = json.loads((root / "phantom.json").read_text())
    lesions = {(p["folder"], lesion["number"]): lesion for p in description["patients"] for lesion in p["lesions"]}
    truth = {r["sop_instance_uid"]: r for r in read_csv(root / "slices.csv")}
    out = {}
    with h5py.File(root / "masks.h5", "r") as masks:
        for uid, row in truth.items():
            ids = masks[uid]["lesion-id"][()]
            for value in np.unique(ids[ids > 0]):
                lesion = lesions[(row["patient"], int(value) - 1)]
                out[(uid, int(value) - 1)] = {"mask": ids == value, "kind": lesion["kind"], "organ": lesion["organ"],
                                              "path": root / masks[uid].attrs["path"],
                                              "organ_mask": masks[uid][lesion["organ"]][()].astype(bool)}
    return out


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    """4 patients (every scanner) × 32 slices at 128 px."""
    out = tmp_path_factory.mktemp("v3") / "archive"
    make_archive(out, patients=4, slices=32, seed=5, size=128, version=3)
    return out


def test_v3_writes_its_files_and_every_kind(v3):
    description = json.loads((v3 / "phantom.json").read_text())
    assert description["version"] == 3 and description["lesion_kinds"] == list(KINDS)
    for patient in description["patients"]:
        kinds = {lesion["kind"] for lesion in patient["lesions"]}
        groups = {lesion["organ"].split("_")[0] for lesion in patient["lesions"]}
        assert 3 <= len(patient["lesions"]) <= 6 and len(kinds) >= 3 and groups == set(GROUPS), patient["lesions"]
        assert patient["nuisances"]["lesions"] == []  # phantom v2's liver lesions are replaced
    boxes = read_csv(v3 / "lesion-boxes.csv")
    assert list(boxes[0]) == ["sop_instance_uid", "frame", "x", "y", "w", "h", "label"]
    assert {row["label"] for row in boxes} == set(KINDS)
    with h5py.File(v3 / "masks.h5", "r") as masks:
        assert list(masks.attrs["organs"])[-len(MASK_NAMES):] == list(MASK_NAMES)
        group = masks[boxes[0]["sop_instance_uid"]]
        assert {"liver", "spleen", "lesion", *MASK_NAMES} <= set(group)  # the v2 layout plus the v3 datasets


def test_boxes_are_tight_around_the_lesion_masks(v3):
    """Every lesion cross-section has exactly one row whose box is its mask's bounding box and
    whose label is its kind; lesion-<kind> and lesion are the unions of those masks."""
    regions = lesion_regions(v3)
    rows = read_csv(v3 / "lesion-boxes.csv")
    assert len(rows) == len(regions) > 15
    expected = Counter((uid, *bbox(r["mask"]), r["kind"]) for (uid, _), r in regions.items())
    got = Counter((r["sop_instance_uid"], int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"]), r["label"]) for r in rows)
    assert got == expected
    assert all(r["frame"] == "0" and int(r["w"]) >= 2 and int(r["h"]) >= 2 for r in rows)
    by_slice = defaultdict(list)
    for (uid, _), region in regions.items():
        by_slice[uid].append(region)
    with h5py.File(v3 / "masks.h5", "r") as masks:
        for uid in {r["sop_instance_uid"] for r in read_csv(v3 / "labels.csv")}:
            group, shown = masks[uid], by_slice.get(uid, [])
            for kind in KINDS:
                union = np.zeros(group["liver"].shape, bool)
                for region in shown:
                    union |= region["mask"] if region["kind"] == kind else False
                np.testing.assert_array_equal(group[f"lesion-{kind}"][()].astype(bool), union)
            np.testing.assert_array_equal(group["lesion"][()].astype(bool), group["lesion-id"][()] > 0)


def test_kind_labels_agree_with_the_boxes(v3):
    """labels-lesion-kind.csv: every slice once; its lesion's kind, none, or mixed for two kinds;
    labels-lesion.csv (slices showing liver) follows the lesion mask."""
    labels = read_csv(v3 / "labels-lesion-kind.csv")
    assert list(labels[0]) == ["sop_instance_uid", "frame", "label"]
    assert [r["sop_instance_uid"] for r in labels] == [r["sop_instance_uid"] for r in read_csv(v3 / "labels.csv")]
    kinds = defaultdict(set)
    for row in read_csv(v3 / "lesion-boxes.csv"):
        kinds[row["sop_instance_uid"]].add(row["label"])
    for row in labels:
        shown = kinds.get(row["sop_instance_uid"], set())
        assert row["label"] == ("none" if not shown else "mixed" if len(shown) > 1 else next(iter(shown)))
    counts = Counter(r["label"] for r in labels)
    assert counts["none"] > 0 and sum(counts[k] for k in KINDS) > 10, counts
    presence = read_csv(v3 / "labels-lesion.csv")
    assert {r["label"] for r in presence} == {"lesion", "no-lesion"}
    for row in presence:
        assert (row["label"] == "lesion") == bool(kinds.get(row["sop_instance_uid"]))


def test_lesions_sit_inside_their_organ(v3):
    regions = lesion_regions(v3)
    organs = Counter()
    for region in regions.values():
        assert not np.any(region["mask"] & ~region["organ_mask"]), region["organ"]
        organs[region["organ"].split("_")[0]] += 1
    assert set(organs) == set(GROUPS), organs


def test_every_kind_in_every_organ_over_many_patients():
    """Drawn without writing files, 30 patients: each kind in each organ at least 4 times, sizes
    from under 1 cm to over 2 cm across in every kind (overlapping), at least three kinds in
    every patient."""
    found, radii = Counter(), defaultdict(list)
    for index in range(30):
        nuisances = replace(draw_nuisances(11, index, 420.0), lesions=[])
        lesions = draw_lesions(11, index, patient_v2(11, index, nuisances), 24, 420.0)
        assert len({lesion.kind for lesion in lesions}) >= 3
        for lesion in lesions:
            found[(lesion.kind, lesion.organ.split("_")[0])] += 1
            radii[lesion.kind].append(lesion.r * 190.0)
    assert all(found[(kind, group)] >= 4 for kind in KINDS for group in GROUPS), found
    for kind in KINDS:
        assert min(radii[kind]) < 5.0 and max(radii[kind]) > 10.0, (kind, min(radii[kind]), max(radii[kind]))


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> dict[str, Path]:
    """The same 4 patients rendered in each contrast phase (so the same lesions in every phase)."""
    root = tmp_path_factory.mktemp("v3-phases")
    return {phase: make_archive(root / phase, patients=4, slices=20, seed=4, size=192, version=3,
                                overrides={"phase": phase}).out for phase in PHASES}


def measure(region: dict, hu: np.ndarray) -> dict:
    """HU statistics of one lesion cross-section: inside, its centre and edge (the outer third of
    its radius), and the ring of organ 3 px around it."""
    mask = region["mask"]
    depth = max(1, int(round(0.33 * np.sqrt(mask.sum() / np.pi))))
    centre = ndimage.binary_erosion(mask, iterations=depth)
    ring = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=3) & ~mask & region["organ_mask"]
    inside = hu[mask]
    return {"inside": float(np.median(inside)), "p99": float(np.percentile(inside, 99)),
            "soft": float(np.median(inside[inside < 150])) if (inside < 150).any() else np.nan,
            "centre": float(hu[centre].mean()) if centre.any() else np.nan,
            "edge": float(hu[mask & ~centre].mean()), "ring": float(np.median(hu[ring])) if ring.any() else np.nan}


def test_kinds_look_different_by_contrast_phase(phases):
    """On the pixels pydicom decodes, per sizeable lesion cross-section (≥ 30 px), the same lesion
    in the three phases: cysts near water and unenhanced; hypervascular lesions bright in the
    arterial phase only, iso to slightly hyperdense in the portal-venous one; metastases with a
    rim brighter than their centre once contrast is given and darker than liver or spleen without;
    calcified lesions with dense calcium in every phase in a soft-tissue matrix."""
    regions = {phase: lesion_regions(root) for phase, root in phases.items()}
    keys = sorted(regions["arterial"])
    assert all(sorted(regions[phase]) == keys for phase in PHASES)  # same lesions, same slices
    stats: dict[str, list[dict]] = defaultdict(list)
    for key in keys:
        region = regions["arterial"][key]
        if region["mask"].sum() < 30:
            continue
        stats[region["kind"]].append({phase: measure(regions[phase][key], hu_of(regions[phase][key]["path"]))
                                      | {"organ": region["organ"]} for phase in PHASES})
    assert all(len(stats[kind]) >= 2 for kind in KINDS), {kind: len(v) for kind, v in stats.items()}
    for s in stats["cyst"]:
        assert all(-15 < s[phase]["inside"] < 25 for phase in PHASES), s
        assert abs(s["arterial"]["inside"] - s["non-contrast"]["inside"]) < 10, s
        assert abs(s["portal-venous"]["inside"] - s["non-contrast"]["inside"]) < 10, s
    for s in stats["hypervascular"]:
        assert s["arterial"]["inside"] > 85 and s["arterial"]["inside"] > s["non-contrast"]["inside"] + 45, s
        if not s["arterial"]["organ"].startswith("kidney"):
            assert -10 < s["portal-venous"]["inside"] - s["portal-venous"]["ring"] < 40, s
    for s in stats["metastasis"]:
        assert s["arterial"]["edge"] > s["arterial"]["centre"] + 25, s
        assert s["portal-venous"]["edge"] > s["portal-venous"]["centre"] + 25, s
        if not s["arterial"]["organ"].startswith("kidney"):  # unenhanced kidney (~30 HU) is nearly as dark
            assert s["non-contrast"]["inside"] < s["non-contrast"]["ring"] - 8, s
    for s in stats["calcified"]:
        assert all(s[phase]["p99"] > 200 and 20 < s[phase]["soft"] < 90 for phase in PHASES), s
    # Between kinds, in the phase that tells them apart: the rim of metastases vs cysts (whose
    # edge is only blurred into the organ), arterial brightness of hypervascular lesions vs cysts.
    contrast = {kind: np.median([s["arterial"]["edge"] - s["arterial"]["centre"] for s in v]) for kind, v in stats.items()}
    assert contrast["metastasis"] > contrast["cyst"] + 20, contrast
    arterial = {kind: np.median([s["arterial"]["inside"] for s in v]) for kind, v in stats.items()}
    assert arterial["hypervascular"] > arterial["cyst"] + 60, arterial


def test_the_same_lesion_at_another_field_of_view(tmp_path):
    """Two fields of view and patient offsets: each lesion's box, in mm from the image centre,
    moves by the offset and keeps its size (boxes are in each image's own pixel grid)."""
    base = {"rotation_deg": 0.0, "metal": None}
    small = make_archive(tmp_path / "a", patients=2, slices=16, seed=3, size=128, version=3,
                         overrides={**base, "pixel_spacing": 0.6, "offset_mm": [0, 0]})
    large = make_archive(tmp_path / "b", patients=2, slices=16, seed=3, size=128, version=3,
                         overrides={**base, "pixel_spacing": 0.9, "offset_mm": [15, -10]})
    spacing = {"a": 0.6 * 512 / 128, "b": 0.9 * 512 / 128}
    found = {name: lesion_regions(summary.out) for name, summary in (("a", small), ("b", large))}
    matched = 0
    for key, region in found["a"].items():
        x, y, w, h = bbox(region["mask"])
        if max(w, h) < 6:
            continue
        other = found["b"][key]  # same SOP instance UID and lesion number
        assert other["kind"] == region["kind"]
        x2, y2, w2, h2 = bbox(other["mask"])
        centre_a = (np.array([x + w / 2, y + h / 2]) - 64) * spacing["a"]
        centre_b = (np.array([x2 + w2 / 2, y2 + h2 / 2]) - 64) * spacing["b"]
        np.testing.assert_allclose(centre_b - centre_a, [15, -10], atol=1.2 * spacing["b"])
        np.testing.assert_allclose(np.array([w2, h2]) * spacing["b"], np.array([w, h]) * spacing["a"],
                                   atol=2.2 * spacing["b"])
        ds = pydicom.dcmread(other["path"], stop_before_pixels=True)
        assert float(ds.PixelSpacing[0]) == pytest.approx(spacing["b"], rel=1e-4)
        matched += 1
    assert matched >= 3


def test_v3_with_studies_and_mr(tmp_path):
    """Later exams show the same lesions; the MR-like option works with v3."""
    summary = make_archive(tmp_path / "mr", patients=2, slices=12, seed=1, size=64, version=3, modality="MR",
                           studies_per_patient=2)
    description = json.loads(summary.phantom_json.read_text())
    for patient in description["patients"]:
        first, second = patient["studies"]
        assert first["lesions"] == second["lesions"] and first["modality"] == "MR"
    assert summary.lesion_boxes_csv.is_file() and sum(summary.lesion_kinds.values()) > 0
    assert pydicom.dcmread(summary.dicom_files[0], stop_before_pixels=True).Modality == "MR"


def test_v3_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="simple"):
        make_archive(tmp_path / "a", patients=1, slices=2, size=32, version=3, simple=True)
    with pytest.raises(ConfigError, match="version"):
        make_archive(tmp_path / "b", patients=1, slices=2, size=32, version=4)
    with pytest.raises(ConfigError, match="lesions override"):
        make_archive(tmp_path / "c", patients=1, slices=2, size=32, version=3, overrides={"lesions": []})


def test_cli_v3_flag(capsys, tmp_path):
    out = tmp_path / "archive"
    code = main(["phantom", str(out), "--v3", "--patients", "2", "--slices", "12", "--size", "64"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "lesion cross-sections: cyst" in stdout and str(out / "lesion-boxes.csv") in stdout
    assert json.loads((out / "phantom.json").read_text())["version"] == 3
    code = main(["phantom", str(tmp_path / "x"), "--v3", "--simple"])
    stdout, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ") and err.strip().count("\n") == 0


# Every file of this v2 archive, hashed on the commit before phantom v3 existed (47fd36a).
V2_ARCHIVE = {"patients": 4, "slices": 12, "seed": 7, "size": 96}
V2_DIGEST = "89962b9a8c47d7a39c6a286482dfecadfecf589e1507605bf9199604f62cbe3b"


def archive_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def test_v2_is_unchanged_byte_for_byte(tmp_path):
    """The default is still phantom v2: the same files, the same bytes as before v3."""
    summary = make_archive(tmp_path / "v2", **V2_ARCHIVE)
    assert summary.version == 2 and summary.lesion_boxes_csv is None and summary.labels_lesion_kind_csv is None
    assert not (summary.out / "lesion-boxes.csv").exists()
    assert archive_digest(summary.out) == V2_DIGEST
