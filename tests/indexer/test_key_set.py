"""The writer's set of committed keys: a sorted uint64 array plus recent changes, read back from
the hashes each shard stores (shards written before them are hashed again)."""

from __future__ import annotations

import json

import h5py
import numpy as np

from medcbir.indexer import IndexWriter
from medcbir.indexer.checksum import fast_checksum
from medcbir.indexer.fsutil import sha256_file
from medcbir.indexer.keys import HashSet, key_hash, key_hashes, source_hash, source_hashes

from .conftest import FakeEncoder, Meta, clustered


def test_hash_set_behaves_as_a_python_set_through_folds(monkeypatch):
    monkeypatch.setattr(HashSet, "FOLD", 50)
    rng = np.random.default_rng(0)
    ours, model = HashSet(), set()
    universe = rng.integers(0, 2**63, 400, dtype=np.uint64)
    for step in range(300):
        pick = universe[rng.integers(0, len(universe), int(rng.integers(1, 40)))]
        op = step % 3
        if op == 0:
            ours.update(pick.tolist())
            model.update(int(h) for h in pick)
        elif op == 1:
            ours.difference_update(pick.tolist())
            model.difference_update(int(h) for h in pick)
        else:
            big = universe[rng.integers(0, len(universe), 300)]
            ours.update(big)  # an array: folded at once
            model.update(int(h) for h in big)
        assert len(ours) == len(model)
        probe = universe[rng.integers(0, len(universe), 50)]
        assert [int(h) in ours for h in probe] == [int(h) in model for h in probe]
    assert sorted(ours) == sorted(model)
    assert ours.to_array().tolist() == sorted(model)


def test_vectorised_hashes_equal_the_per_key_hashes():
    uids = np.array([b"1.2.3", b"1.2.4", "1.2.5".encode()])
    assert key_hashes(uids, [0, 1, 2]).tolist() == [key_hash("1.2.3", 0), key_hash("1.2.4", 1), key_hash("1.2.5", 2)]
    assert source_hashes(np.array([b"a.dcm", b""])).tolist() == [source_hash("a.dcm"), 0]


def test_a_reopened_writer_skips_committed_items_with_or_without_stored_hashes(tmp_path):
    x = clustered(300, dim=8)
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(8), index_spec="Flat", shard_size=100) as w:
        w.add_embeddings([Meta(i) for i in range(200)], x[:200])
    shards = sorted((tmp_path / "ix").glob("shard-*.h5"))
    with h5py.File(shards[0], "r") as f:
        assert f["key_hashes/item"][...].tolist() == [key_hash(f"1.2.3.{i}", 0) for i in range(100)]
    with h5py.File(shards[1], "a") as f:  # a shard from before stored hashes (its manifest entry to match)
        del f["key_hashes"]
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    entry = next(e for e in manifest["shards"] if e["file"] == shards[1].name)
    entry.update(bytes=shards[1].stat().st_size, sha256=sha256_file(shards[1]), xxh3=fast_checksum(shards[1]))
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(8), index_spec="Flat", shard_size=100) as w:
        assert w.has_key("1.2.3.5", 0) and w.has_key("1.2.3.150", 0) and not w.has_key("1.2.3.250", 0)
        added = w.add_embeddings([Meta(i) for i in range(300)], x)
    assert added == 100
