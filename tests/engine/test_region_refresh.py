"""Re-describing an index's regions in place (``medcbir index ARCHIVE --out INDEX --refresh-regions``):
an index of an older region recipe, or one built with ``--no-regions``, ends up with the regions a
fresh index of the same archive has, its slice embeddings and FAISS files untouched, resumable
after kill -9, with missing sources counted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import medcbir.indexer.writer as writer_module
from medcbir.cli.main import main
from medcbir.encoders.regions import REGIONS_VERSION
from medcbir.engine import Engine
from medcbir.indexer import IndexStore, verify
from medcbir.indexer.manifest import read_manifest
from medcbir.indexer.region_refresh import refresh_regions
from tests.region_checks import assert_same_regions, region_data

OLD = "radiomic-v0/proposals-v0"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Phantom v3, 3 patients × 8 slices of 96 px, indexed fresh with regions (shards of 6)."""
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive

    root = tmp_path_factory.mktemp("refresh")
    make_archive(root / "archive", patients=3, slices=8, seed=5, size=96, version=3, workers=1)
    index_archive(root / "archive", root / "fresh", "thumbnail:8", workers=1, progress=False, shard_size=6)
    return {"root": root, "archive": root / "archive", "fresh": root / "fresh"}


def _old_index(small, tmp_path, monkeypatch, name="old"):
    """The archive indexed with the region recipe recorded as an older one."""
    from medcbir.indexer import index_archive

    monkeypatch.setattr(writer_module, "REGIONS_VERSION", OLD)
    index_archive(small["archive"], tmp_path / name, "thumbnail:8", workers=1, progress=False, shard_size=6)
    monkeypatch.undo()
    assert read_manifest(tmp_path / name)["regions"]["version"] == OLD
    return tmp_path / name


def _slices(index):
    """(embeddings, FAISS records) of an index: what a refresh must not touch."""
    with IndexStore.open(index) as store:
        emb = store.embeddings(store.ids)
    return emb, [s.get("faiss") for s in read_manifest(index)["shards"]]


def _roi_answers(index, archive):
    """A few region queries' neighbours (item, matched box, score) on ``index``."""
    out = []
    with Engine.open(index) as engine:
        for source in sorted(archive.rglob("*.dcm"))[::5][:4]:
            hits = engine.search(str(source), 5, roi=(20, 24, 40, 36))[0]
            out.append([(n.meta["sop_instance_uid"], tuple(n.region), round(float(n.score), 6)) for n in hits])
    return out


def test_an_old_recipe_index_refreshed_answers_as_a_fresh_index(small, tmp_path, monkeypatch, capsys):
    old = _old_index(small, tmp_path, monkeypatch)
    before = _slices(old)
    # the old recipe is refused, naming the fix
    source = str(next(small["archive"].rglob("*.dcm")))
    assert main(["search", str(old), source, "--roi", "20,24,40,36"]) == 1
    assert "--refresh-regions" in capsys.readouterr().err
    # refreshed through the CLI
    assert main(["index", str(small["archive"]), "--out", str(old), "--refresh-regions", "--workers", "1", "--no-progress",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["previous"] == OLD and summary["version"] == REGIONS_VERSION
    assert summary["refreshed"] == summary["shards"] == 4 and summary["items"] == 24 and not summary["skipped"]
    manifest = read_manifest(old)
    assert manifest["regions"]["version"] == REGIONS_VERSION and "regions_refresh" not in manifest
    assert manifest["region_search"]["version"] == REGIONS_VERSION  # the stored structure follows
    assert all("regions_version" not in s for s in manifest["shards"])
    assert verify(old).ok, verify(old).problems
    # slices untouched: the same embeddings and the same FAISS files
    after = _slices(old)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]
    # the regions, and region queries, of a fresh index of the same archive
    assert_same_regions(region_data(small["fresh"]), region_data(old))
    assert _roi_answers(old, small["archive"]) == _roi_answers(small["fresh"], small["archive"])
    # nothing left to do; items can be added again
    again = refresh_regions(old, small["archive"], workers=1)
    assert again.complete and again.refreshed == 0
    assert main(["index", str(small["archive"]), "--out", str(old), "--workers", "1", "--no-progress", "--encoder", "thumbnail:8"]) == 0


def test_refresh_resumes_after_kill_9(small, tmp_path, monkeypatch):
    old = _old_index(small, tmp_path, monkeypatch)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDCBIR_TEST_KILL_AT": "shard-fsync:3"}  # the third shard rewritten
    cmd = [sys.executable, "-m", "medcbir", "index", str(small["archive"]), "--out", str(old), "--refresh-regions",
           "--workers", "1", "--no-progress", "--json"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mid = read_manifest(old)
    assert mid["regions"]["version"] == OLD and mid["regions_refresh"]["version"] == REGIONS_VERSION
    assert sum(s.get("regions_version") == REGIONS_VERSION for s in mid["shards"]) == 2
    assert verify(old).ok, verify(old).problems  # a refresh under way verifies
    env.pop("MEDCBIR_TEST_KILL_AT")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["complete"] and summary["resumed"] == 2 and summary["refreshed"] == 2
    assert verify(old).ok
    assert_same_regions(region_data(small["fresh"]), region_data(old))
    assert _roi_answers(old, small["archive"]) == _roi_answers(small["fresh"], small["archive"])
    leftovers = [p.name for p in old.iterdir() if ".tmp-" in p.name]
    assert not leftovers


def test_an_index_without_regions_gains_them_and_a_missing_file_is_counted(small, tmp_path):
    from medcbir.indexer import index_archive

    archive = tmp_path / "archive"
    shutil.copytree(small["archive"], archive)
    plain = tmp_path / "plain"
    index_archive(archive, plain, "thumbnail:8", workers=1, progress=False, shard_size=6, regions=False)
    assert "regions" not in read_manifest(plain)
    sorted(archive.rglob("*.dcm"))[3].unlink()  # gone since it was indexed
    # the CLI counts it and names it as the index records it (sealed: the path may name the patient)
    run = subprocess.run([sys.executable, "-m", "medcbir", "index", str(archive), "--out", str(plain), "--refresh-regions",
                          "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "regions          " + REGIONS_VERSION + " (the index had none)" in lines
    assert "skipped          1 item(s) without regions: gone 1 (1 source(s))" in lines
    named = [line.split()[1] for line in lines if line.startswith("  gone ")]
    assert len(named) == 1 and named[0].startswith("sealed:")
    assert any(line.startswith("items            23 described") for line in lines)
    manifest = read_manifest(plain)
    assert manifest["regions"]["version"] == REGIONS_VERSION and "regions_refresh" not in manifest
    assert verify(plain).ok, verify(plain).problems
    fresh, got = region_data(small["fresh"]), region_data(plain)
    missing = [k for k, (boxes, _) in got.items() if not len(boxes)]
    assert len(missing) == 1
    assert_same_regions({k: v for k, v in fresh.items() if k not in missing}, {k: v for k, v in got.items() if k not in missing})
    assert manifest["region_search"]["regions"] == sum(len(b) for b, _ in got.values())
    # nothing left to do (the API)
    again = refresh_regions(plain, archive, workers=1)
    assert again.complete and again.refreshed == 0 and again.previous == REGIONS_VERSION


def test_refresh_refuses_options_that_do_not_apply(small, tmp_path, capsys):
    assert main(["index", str(small["archive"]), "--out", str(tmp_path / "none"), "--refresh-regions", "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["index", str(small["archive"]), "--out", str(small["fresh"]), "--refresh-regions", "--no-regions"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-regions" in err[0]


def test_a_moved_archive_and_a_compaction_meanwhile(small, tmp_path, monkeypatch):
    """The archive moved since it was indexed: the folder given stands for its root. A compaction
    replacing shards while the refresh describes them: those shards are done again in the next pass."""
    from medcbir.indexer import compact, delete, index_archive
    from medcbir.indexer import region_refresh

    old_place, new_place = tmp_path / "old" / "archive", tmp_path / "new" / "archive"
    shutil.copytree(small["archive"], old_place)
    plain = tmp_path / "plain"
    index_archive(old_place, plain, "thumbnail:8", workers=1, progress=False, shard_size=6, regions=False)
    shutil.move(str(old_place), str(new_place))
    with IndexStore.open(plain) as store:
        victim = str(store.columns["sop_instance_uid"][8])  # in the second shard
    real = region_refresh._commit_shard
    calls = []

    def compacting_first(index_dir, entry, block, target):
        if not calls:  # the first shard is about to be committed: a delete and a compaction commit first
            delete(index_dir, sop=[victim])
            compact(index_dir)
        calls.append(entry["file"])
        return real(index_dir, entry, block, target)

    monkeypatch.setattr(region_refresh, "_commit_shard", compacting_first)
    summary = refresh_regions(plain, new_place, workers=1)
    assert summary.complete and not summary.skipped, summary
    assert len(calls) > summary.shards  # the replaced shards were described again
    assert summary.items == 23 and summary.tombstoned == 0  # compaction dropped the tombstoned item
    manifest = read_manifest(plain)
    assert manifest["regions"]["version"] == REGIONS_VERSION and verify(plain).ok, verify(plain).problems
    fresh, got = region_data(small["fresh"]), region_data(plain)
    assert len(got) == 23 and victim not in {sop for sop, _ in got}
    assert_same_regions({k: v for k, v in fresh.items() if k in got}, got)
