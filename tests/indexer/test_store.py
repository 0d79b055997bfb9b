"""IndexStore: generations, corruption detection, lazy reads."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from medcbir.errors import IndexCorrupt, IndexNotFound
from medcbir.indexer import IndexStore, IndexWriter, verify

from .conftest import FakeEncoder, Meta


def flip_byte(path, offset=None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "header", "last"])
def test_a_flipped_byte_in_a_shard_is_named(index_copy, where):
    shard = index_copy / "shard-000002.h5"
    offset = {"middle": None, "header": 3, "last": shard.stat().st_size - 1}[where]
    flip_byte(shard, offset)
    report = verify(index_copy)
    assert not report.ok
    assert report.problems[0].startswith("shard-000002.h5: checksum mismatch")
    assert all(p.startswith("shard-000002.h5") for p in report.problems)
    with pytest.raises(IndexCorrupt, match=r"^shard-000002\.h5: checksum mismatch"):
        IndexStore.open(index_copy)


def test_truncated_and_missing_shards_are_named(index_copy):
    path = index_copy / "shard-000003.h5"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(IndexCorrupt, match="shard-000003.h5: size"):
        IndexStore.open(index_copy, verify="sizes")
    path.unlink()
    with pytest.raises(IndexCorrupt, match="shard-000003.h5: committed file is missing"):
        IndexStore.open(index_copy, verify="none")
    assert verify(index_copy).problems == ["shard-000003.h5: committed file is missing"]


def test_missing_or_broken_manifest(tmp_path, index_copy):
    with pytest.raises(IndexNotFound):
        IndexStore.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFound, match="no manifest.json"):
        IndexStore.open(tmp_path / "empty")
    (index_copy / "manifest.json").write_text("{not json")
    assert IndexStore.open(index_copy).recovery.generation >= 1  # a kept generation (test_recovery.py)
    for kept in index_copy.glob("manifest-*.json"):
        kept.unlink()
    with pytest.raises(IndexCorrupt, match="manifest"):
        IndexStore.open(index_copy)
    assert not verify(index_copy).ok


def test_reader_keeps_the_generation_it_opened(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    writer = IndexWriter.open(tmp_path / "ix", FakeEncoder(8), shard_size=10)
    writer.add_embeddings([Meta(i) for i in range(20)], emb[:20])
    writer.commit()
    old = IndexStore.open(tmp_path / "ix")
    writer.add_embeddings([Meta(i) for i in range(20, 40)], emb[20:])
    writer.close()
    assert len(old.ids) == 20 and old.faiss_index.ntotal == 20
    new = IndexStore.open(tmp_path / "ix")
    assert len(new.ids) == 40 and new.generation > old.generation
    np.testing.assert_array_equal(old.embeddings(np.arange(20)), emb[:20])


def test_embeddings_and_meta_by_id(built_index):
    store = IndexStore.open(built_index[0], verify="none")
    ids = np.array([70, 3, 3, 17, 0, 64])
    expected = []
    for i in ids:  # oracle: straight h5py reads of the shard holding each id
        entry = next(s for s in store.manifest["shards"] if s["first_id"] <= i <= s["last_id"])
        with h5py.File(built_index[0] / entry["file"], "r") as f:
            expected.append(f["embeddings"][i - entry["first_id"]])
    np.testing.assert_array_equal(store.embeddings(ids), np.stack(expected))
    metas = store.meta(ids[:2])
    assert metas[0]["id"] == 70 and metas[0]["sop_instance_uid"] == store.columns["sop_instance_uid"][70]
    assert isinstance(metas[0]["pixel_spacing"], tuple) and isinstance(metas[0]["frame"], int)
    assert list(store.columns)[:2] == ["sop_instance_uid", "frame"]  # ItemMeta.COLUMNS order
    with pytest.raises(Exception, match="not in the index"):
        store.rows(np.array([80]))


def test_shard_with_another_fingerprint_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((6, 8)).astype(np.float32)
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(8), shard_size=3) as w:
        w.add_embeddings([Meta(i) for i in range(6)], emb)
    path = tmp_path / "ix" / "shard-000001.h5"
    with h5py.File(path, "r+") as f:  # a consistent file (checksums updated below) but foreign
        f.attrs["encoder_fingerprint"] = "0" * 64
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    import hashlib

    from medcbir.indexer.checksum import fast_checksum

    manifest["shards"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["shards"][0]["xxh3"] = fast_checksum(path)
    manifest["shards"][0]["bytes"] = path.stat().st_size
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorrupt, match="shard-000001.h5: encoder fingerprint"):
        IndexStore.open(tmp_path / "ix")
    problems = verify(tmp_path / "ix").problems
    assert problems and problems[0].startswith("shard-000001.h5: encoder fingerprint")
