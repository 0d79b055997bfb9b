"""Region search end to end on phantom v3 (real DICOM, real HDF5, real FAISS): lesions of four kinds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from medcbir.cli.main import main
from medcbir.encoders.region_descriptor import DIM
from medcbir.encoders.region_proposals import box_iou
from medcbir.engine import Engine
from medcbir.indexer import compact, delete
from tests.region_checks import assert_same_regions, region_data


def _sources(engine):
    return {m["sop_instance_uid"]: m["source"] for m in engine.meta(engine.ids)}


def _box(row):
    return [int(row[c]) for c in "xywh"]


def _ap(relevant, k=5):
    hits, total = 0, 0.0
    for i, r in enumerate(relevant[:k]):
        if r:
            hits += 1
            total += hits / (i + 1)
    return total / hits if hits else 0.0


def test_a_lesion_box_finds_lesions_of_its_kind_in_other_patients(lesions):
    """The top hits overlap lesions of the query's kind in other patients (IoU > 0.3) far more
    often than regions drawn at random do, and region search ranks slices with that kind of
    lesion far above whole-slice search."""
    boxes = lesions["boxes"]
    by_sop: dict = {}
    for r in boxes:
        by_sop.setdefault(r["sop_instance_uid"], []).append(r)

    def on_lesion(sop, region, kind) -> bool:
        same = [_box(o) for o in by_sop.get(sop, []) if o["label"] == kind]
        return bool(same) and box_iou(np.array([region]), np.array(same)).max() > 0.3

    clear = [r for r in boxes if min(int(r["w"]), int(r["h"])) >= 8]
    assert len(clear) >= 15
    with Engine.open(lesions["index"]) as engine:
        sources = _sources(engine)
        from medcbir.engine.region_search import RegionIndex

        regions = RegionIndex.of(engine)
        sops = [m["sop_instance_uid"] for m in engine.meta(regions.item_ids)]
        found, chance, region_ap, slice_ap = [], [], [], []
        for r in clear:
            hits = engine.search(sources[r["sop_instance_uid"]], 5, roi=_box(r), exclude="same-patient")[0]
            assert hits and all(n.region is not None and n.query_region == tuple(_box(r)) for n in hits)
            found.append(any(on_lesion(n.meta["sop_instance_uid"], n.region, r["label"]) for n in hits[:3]))
            chance.append(np.mean([on_lesion(sop, box, r["label"]) for sop, box in zip(sops, regions.boxes)]))
            region_ap.append(_ap([lesions["kinds"].get(n.meta["sop_instance_uid"]) == r["label"] for n in hits]))
            whole = engine.search(sources[r["sop_instance_uid"]], 5, exclude="same-patient")[0]
            slice_ap.append(_ap([lesions["kinds"].get(n.meta["sop_instance_uid"]) == r["label"] for n in whole]))
    at_random = 1 - (1 - np.mean(chance)) ** 3  # three regions drawn at random
    assert np.mean(found) >= max(0.2, 4 * at_random), (np.mean(found), at_random)
    assert np.mean(region_ap) >= np.mean(slice_ap) + 0.1, (np.mean(region_ap), np.mean(slice_ap))


def _resampled(src: Path, dst: Path, zoom: float) -> None:
    """The same slice at another field of view: pixels resampled by ``zoom``, PixelSpacing scaled."""
    ds = pydicom.dcmread(src)
    pixels = ds.pixel_array.astype(np.float32)
    limits = np.iinfo(ds.pixel_array.dtype)
    out = np.clip(np.round(ndimage.zoom(pixels, zoom, order=1)), limits.min, limits.max).astype(ds.pixel_array.dtype)
    ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
    ds.Rows, ds.Columns = out.shape
    ds.PixelSpacing = [float(v) * pixels.shape[0] / out.shape[0] for v in ds.PixelSpacing]
    ds.PixelData = out.tobytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)


def test_a_whole_organ_box_finds_that_organ_in_other_patients(lesions):
    """A box around a whole liver (wider than any top-hat structure) is matched at its scale: the
    top region found in other patients is their liver's (IoU with its box > 0.5) for most queries.
    Without organ-sized proposals none of these 10 queries did (9 do with them)."""
    import h5py

    def box_of(mask):
        rows, cols = np.nonzero(mask)
        return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]

    with Engine.open(lesions["index"]) as engine, h5py.File(lesions["archive"] / "masks.h5", "r") as fh:
        uids = sorted(u for u in _sources(engine) if u in fh and "liver" in fh[u] and fh[u]["liver"][()].sum() > 1500)
        picks = uids[:: max(1, len(uids) // 10)][:10]
        hits = []
        for uid in picks:
            [found] = engine.search([f"{uid}:0"], k=1, roi=box_of(fh[uid]["liver"][()]), exclude="same-patient")
            other = fh[found[0].meta["sop_instance_uid"]]
            liver = other["liver"][()] if "liver" in other else np.zeros(1)
            hits.append(round(float(box_iou(np.array([box_of(liver)]), np.array([found[0].region]))[0, 0]), 2) if liver.any() else 0.0)
    assert len(picks) == 10 and sum(iou > 0.5 for iou in hits) >= 6, hits


def test_a_box_in_another_field_of_view_finds_the_same_neighbours(lesions, tmp_path):
    """The same lesion queried from a copy at another field of view (resampled coarser and finer,
    PixelSpacing scaled, box scaled) shares most of its top 5 with the original query (5 of ~190
    items drawn at random would share 0.03 of them). The whitened metric before ``floored-v1``
    kept about half: a lesion at another field of view moved furthest in the directions the archive
    barely varies in, which whitening weighted most. The finer copy is an upsampled one:
    its detail is coarser than its PixelSpacing says, which a real finer acquisition's is not."""
    clear = sorted((r for r in lesions["boxes"] if min(int(r["w"]), int(r["h"])) >= 8), key=lambda r: r["sop_instance_uid"])[:8]
    overlap: dict[float, list[float]] = {0.75: [], 1.25: []}
    with Engine.open(lesions["index"]) as engine:
        sources = _sources(engine)
        for i, r in enumerate(clear):
            same = [n.id for n in engine.search(sources[r["sop_instance_uid"]], 5, roi=_box(r), exclude="same-patient")[0]]
            for zoom in overlap:
                copy = tmp_path / f"q{i}-{zoom}.dcm"
                _resampled(Path(sources[r["sop_instance_uid"]]), copy, zoom)
                x, y, w, h = _box(r)
                scaled = [int(round(x * zoom)), int(round(y * zoom)), max(1, int(round(w * zoom))), max(1, int(round(h * zoom)))]
                other = [n.id for n in engine.search(str(copy), 5, roi=scaled, exclude="same-patient")[0]]
                overlap[zoom].append(len(set(same) & set(other)) / 5)
    assert all(np.mean(v) >= 0.7 for v in overlap.values()), overlap


def test_regions_follow_delete_and_compact(lesions, tmp_path):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(lesions["index"], index)
    before = region_data(index)
    with Engine.open(index) as engine:
        series = engine.meta(engine.ids[:1])[0]["series_instance_uid"]
    removed = delete(index, series=[series])
    assert removed > 0
    result = compact(index, shard_size=64)
    assert result["rewritten"] > 0
    after = region_data(index)
    assert len(after) == len(before) - removed
    assert_same_regions({k: before[k] for k in after}, after)
    with Engine.open(index) as engine:
        r = next(r for r in lesions["boxes"] if min(int(r["w"]), int(r["h"])) >= 8)
        source = _sources(Engine.open(lesions["index"]))[r["sop_instance_uid"]]
        hits = engine.search(source, 20, roi=_box(r))[0]
        assert hits and all(n.meta["series_instance_uid"] != series for n in hits)
    assert json.loads(subprocess.run([sys.executable, "-m", "medcbir", "verify", str(index), "--json"], capture_output=True,
                                     text=True, check=True).stdout)["ok"]


def test_regions_survive_kill_9_and_resume(lesions, tmp_path):
    import shutil

    archive = tmp_path / "archive"  # three of the patients: enough for a kill after two shards and a resume
    for patient in sorted(p for p in lesions["archive"].iterdir() if p.is_dir())[:3]:
        shutil.copytree(patient, archive / patient.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDCBIR_TEST_KILL_AT": "shard-fsync:2"}
    cmd = [sys.executable, "-m", "medcbir", "index", str(archive), "--out", str(tmp_path / "index"), "--shard-size", "20",
           "--workers", "1", "--no-progress", "--no-maintenance"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    env.pop("MEDCBIR_TEST_KILL_AT")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = region_data(tmp_path / "index")
    assert len(after) == 3 * 24
    whole = region_data(lesions["index"])
    assert_same_regions({key: whole[key] for key in after}, after)


def test_cli_region_search_verify_and_the_error_without_regions(lesions, tmp_path, capsys):
    r = next(r for r in lesions["boxes"] if min(int(r["w"]), int(r["h"])) >= 8)
    with Engine.open(lesions["index"]) as engine:
        source = _sources(engine)[r["sop_instance_uid"]]
    box = ",".join(r[c] for c in "xywh")
    assert main(["search", str(lesions["index"]), source, "--roi", box, "-k", "3", "--json", "--exclude", "same-patient"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload[0]["query_region"] == _box(r) and len(payload[0]["neighbours"]) == 3
    assert all(len(n["region"]) == 4 for n in payload[0]["neighbours"])
    # the same region as a mask
    ds = pydicom.dcmread(source)
    mask = np.zeros((ds.Rows, ds.Columns), np.uint8)
    x, y, w, h = _box(r)
    mask[y:y + h, x:x + w] = 1
    np.save(tmp_path / "mask.npy", mask)
    assert main(["search", str(lesions["index"]), source, "--roi-mask", str(tmp_path / "mask.npy"), "-k", "3", "--json",
                 "--exclude", "same-patient"]) == 0
    assert [n["sop_instance_uid"] for n in json.loads(capsys.readouterr().out)[0]["neighbours"]] == \
        [n["sop_instance_uid"] for n in payload[0]["neighbours"]]
    assert main(["search", str(lesions["index"]), source, "--roi", "1,2,3"]) != 0
    assert "X,Y,W,H" in capsys.readouterr().err
    # verify --json reports the region index's size and latency
    assert main(["verify", str(lesions["index"]), "--json"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    assert regions["regions"] > 0 and 0 < regions["bytes_per_image"] and regions["query_ms_p50"] > 0
    assert regions["structure"] == "stored" and regions["index"] == "Flat"  # kept by the index, not computed at open
    assert regions["metric"] == "floored-v2"
    assert regions["ram_bytes"] == regions["regions"] * (DIM * 4 + 4 + 8)  # float32 vectors, int32 item ids, int16 boxes
    # an index without regions: one line naming the fix
    plain = tmp_path / "plain"
    assert main(["index", str(lesions["archive"]), "--out", str(plain), "--no-regions", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(plain), source, "--roi", box]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no regions" in err[0] and "medcbir index" in err[0]
    assert main(["index", str(lesions["archive"]), "--out", str(plain), "--workers", "1", "--no-progress"]) == 0  # resumes, still without


def test_regions_of_another_recipe_are_refused_with_the_fix(lesions, tmp_path, monkeypatch, capsys):
    """Regions described by another recipe (another descriptor, proposals or resolution) do not
    compare with a query described by this one: a region query says so instead of answering."""
    import medcbir.indexer.writer as writer_module
    from medcbir.encoders.regions import REGIONS_VERSION

    archive = tmp_path / "archive"
    patient = next(p for p in sorted(lesions["archive"].iterdir()) if p.is_dir())
    import shutil

    shutil.copytree(patient, archive / patient.name)
    monkeypatch.setattr(writer_module, "REGIONS_VERSION", "radiomic-v0/proposals-v0")  # what the writer records
    old = tmp_path / "old"
    assert main(["index", str(archive), "--out", str(old), "--workers", "1", "--no-progress", "--no-maintenance"]) == 0
    monkeypatch.undo()
    capsys.readouterr()
    source = str(next(archive.rglob("*.dcm")))
    assert main(["search", str(old), source, "--roi", "10,10,20,20"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "radiomic-v0/proposals-v0" in err[0] and REGIONS_VERSION in err[0], err
    assert main(["search", str(old), source, "-k", "2"]) == 0  # the slice index still answers
