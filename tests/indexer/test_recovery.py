"""Manifest history and recovery: a damaged manifest.json falls back to the newest intact generation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from medcbir.errors import IndexCorrupt
from medcbir.indexer import IndexStore, IndexWriter, verify
from medcbir.indexer.manifest import KEEP_GENERATIONS, _keep_current, commit_manifest, history, read_manifest
from medcbir.indexer.recovery import newest_intact, repair

from .conftest import FakeEncoder, Meta, clustered


def _grow(index_dir, start, stop, x, shard_size=10):
    with IndexWriter.open(index_dir, FakeEncoder(16), shard_size=shard_size) as w:
        w.add_embeddings([Meta(i) for i in range(start, stop)], x[start:stop])
        w.commit()


@pytest.fixture
def four_generations(tmp_path):
    """Four commits of 10 items each (generations 1..4), one shard each."""
    x = clustered(40, dim=16)
    for lo in range(0, 40, 10):
        _grow(tmp_path / "ix", lo, lo + 10, x)
    return tmp_path / "ix", x


def test_each_commit_keeps_the_generation_it_replaces(four_generations):
    ix, _ = four_generations
    assert json.loads((ix / "manifest.json").read_text())["generation"] == 4
    assert [g for g, _ in history(ix)] == [3, 2, 1][:KEEP_GENERATIONS]
    kept = json.loads((ix / "manifest-000003.json").read_text())
    assert kept["generation"] == 3 and kept["next_id"] == 30


def test_a_truncated_manifest_is_repaired_from_the_previous_generation(four_generations, caplog):
    ix, x = four_generations
    path = ix / "manifest.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated mid-write
    with caplog.at_level(logging.WARNING):
        store = IndexStore.open(ix)  # open falls back, with a warning
    assert store.recovery is not None and store.recovery.generation == 3
    assert len(store.ids) == 30 and "fell back to generation 3" in caplog.text
    np.testing.assert_array_equal(store.embeddings(np.arange(30)), x[:30])
    assert not verify(ix).ok  # the damage is still reported until repaired

    rec = repair(ix)
    assert rec.recovered and rec.source == "manifest-000003.json"
    assert rec.lost_shards == ["shard-000004.h5"] and rec.lost_items == 10
    report = verify(ix)
    assert report.ok and report.items == 30 and report.generation > 4  # numbers never go back

    _grow(ix, 0, 40, x)  # the next run indexes the lost items again, and only those
    store = IndexStore.open(ix)
    assert store.recovery is None and len(store.ids) == 40
    assert sorted(store.columns["sop_instance_uid"]) == sorted(f"1.2.3.{i}" for i in range(40))
    assert verify(ix).ok  # the lost generation's shard was removed, its number reused


def test_a_writer_resumes_over_a_damaged_manifest(four_generations):
    ix, x = four_generations
    (ix / "manifest.json").write_text('{"format": "medcbir-index", "vers')
    _grow(ix, 0, 40, x)
    assert verify(ix).ok and len(IndexStore.open(ix).ids) == 40


def test_a_generation_whose_shard_is_damaged_is_skipped(four_generations):
    ix, _ = four_generations
    (ix / "manifest.json").unlink()
    shard = ix / "shard-000003.h5"
    shard.write_bytes(shard.read_bytes()[:-1])  # generations 3 (and 4) need it
    rec = newest_intact(ix)
    assert rec.generation == 2 and len(rec.rejected) == 2
    assert rec.rejected[1].startswith("manifest-000003.json: shard-000003.h5: size")


def test_verify_repair_cli(four_generations, capsys):
    from medcbir.cli.main import main

    ix, _ = four_generations
    (ix / "manifest.json").write_text("")
    assert main(["verify", str(ix)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["verify", "--repair", str(ix)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("repaired: fell back to generation 3 (manifest-000003.json); lost generation(s) 4: 10 item(s)")
    assert "ok: 30 item(s)" in out
    assert main(["verify", "--repair", str(ix)]) == 0
    assert "nothing to repair" in capsys.readouterr().out


def test_no_intact_generation_left(tmp_path):
    x = clustered(10, dim=16)
    _grow(tmp_path / "ix", 0, 10, x)
    (tmp_path / "ix" / "manifest.json").write_text("[]")
    with pytest.raises(IndexCorrupt, match="no intact manifest generation"):
        IndexStore.open(tmp_path / "ix")


def test_a_commit_after_a_crash_before_the_manifest_rename_leaves_no_temporary_file(tmp_path):
    """A crash after the current manifest was kept as history and before the new one's rename leaves
    ``manifest-G.json`` a hard link of ``manifest.json``; the resumed commit keeps generation G again.
    A rename between two links of one file does nothing, so the temporary link stayed behind (found by
    the kill -9 protocol in test_crash when its kill landed in that window)."""
    ix = tmp_path / "ix"
    with IndexWriter.open(ix, FakeEncoder(16), shard_size=50) as w:
        w.add_embeddings([Meta(i) for i in range(50)], clustered(50, dim=16, seed=1))
    _keep_current(ix)  # the crashed commit got this far
    commit_manifest(ix, read_manifest(ix))  # the resumed commit
    assert not [p.name for p in ix.iterdir() if ".tmp-" in p.name]
    assert verify(ix).ok
