"""delete (tombstones), compact and verify on real indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcbir.errors import IndexCorrupt
from medcbir.indexer import IndexStore, IndexWriter, compact, delete, manifest, verify

from .conftest import FakeEncoder, Meta


def test_delete_series_and_study_tombstones_exactly_their_items(index_copy):
    store = IndexStore.open(index_copy)
    series = store.columns["series_instance_uid"]
    studies = store.columns["study_instance_uid"]
    s0, st1 = series[0], studies[np.nonzero(series != series[0])[0][0]]
    expected = np.nonzero((series == s0) | (studies == st1))[0]
    assert delete(index_copy, series=[s0], study=[st1]) == len(expected) == 40
    assert delete(index_copy, series=[s0]) == 0  # already tombstoned
    assert delete(index_copy, series=[s0[:-1]]) == 0  # a prefix is not a match
    after = IndexStore.open(index_copy)
    assert after.generation == store.generation + 1
    np.testing.assert_array_equal(after.deleted, expected)
    np.testing.assert_array_equal(after.live_mask, ~np.isin(after.ids, expected))
    report = verify(index_copy)
    assert report.ok and report.deleted == 40 and report.items == 80


def test_compact_removes_tombstoned_items_after_committing(index_copy):
    store = IndexStore.open(index_copy)
    series = store.columns["series_instance_uid"]
    gone = series == series[5]
    keep_sops = store.columns["sop_instance_uid"][~gone]
    keep_emb = store.embeddings(store.ids[~gone])
    old_files = {e["file"] for e in store.manifest["shards"]}
    delete(index_copy, series=[series[5]])
    result = compact(index_copy)
    after = IndexStore.open(index_copy)
    assert {k: result[k] for k in ("items", "removed", "shards")} == {"items": 60, "removed": 20, "shards": len(after.manifest["shards"])}
    assert np.array_equal(after.ids, np.arange(60)) and after.deleted.size == 0
    np.testing.assert_array_equal(after.columns["sop_instance_uid"], keep_sops)
    np.testing.assert_array_equal(after.embeddings(after.ids), keep_emb)
    # The replaced shards stay while the kept previous generation references them (recovery).
    assert all((index_copy / f).exists() for f in old_files)
    assert {e["file"] for e in json.loads((index_copy / f"manifest-{after.generation - 1:06d}.json").read_text())["shards"]} == old_files
    assert verify(index_copy).ok
    # The reader opened before compaction still reads its (now unlinked) generation.
    np.testing.assert_array_equal(store.embeddings(store.ids[~gone]), keep_emb)
    assert compact(index_copy)["removed"] == 0


def test_many_tombstones_move_to_a_checksummed_file(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "INLINE_DELETED_MAX", 5)
    emb = np.eye(16, dtype=np.float32)
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(16), shard_size=8) as w:
        w.add_embeddings([Meta(i, series=i % 2) for i in range(16)], emb)
    assert delete(tmp_path / "ix", series=["1.2.9.1"]) == 8
    store = IndexStore.open(tmp_path / "ix")
    assert isinstance(store.manifest["deleted"], dict)
    np.testing.assert_array_equal(store.deleted, np.arange(1, 16, 2))
    assert verify(tmp_path / "ix").ok
    path = tmp_path / "ix" / store.manifest["deleted"]["file"]
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(IndexCorrupt, match=path.name):
        IndexStore.open(tmp_path / "ix")


def test_compaction_killed_before_its_manifest_leaves_the_old_generation(index_copy, monkeypatch):
    import medcbir.indexer.compaction as maintenance

    store = IndexStore.open(index_copy)
    delete(index_copy, series=[store.columns["series_instance_uid"][0]])
    before = IndexStore.open(index_copy)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill between the new shards and the manifest

    monkeypatch.setattr(maintenance, "commit_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        compact(index_copy)
    monkeypatch.undo()
    after = IndexStore.open(index_copy)  # the old generation, intact
    assert after.generation == before.generation and len(after.ids) == 80 and after.deleted.size == 20
    assert verify(index_copy).ok
    result = compact(index_copy)  # orphans of the failed run are removed, the retry completes
    assert result["items"] == 60 and verify(index_copy).ok
    from medcbir.indexer.manifest import retained_files

    # No orphan of the failed run is left: every shard file is one a kept generation commits.
    kept = retained_files(index_copy, IndexStore.open(index_copy).manifest)
    assert {p.name for p in index_copy.glob("shard-*")} <= kept
