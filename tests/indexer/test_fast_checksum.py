"""The fast checksum (XXH3-64) recorded per committed file and checked at every open."""

from __future__ import annotations

import json

import pytest
import xxhash

from medcbir.errors import IndexCorrupt
from medcbir.indexer import IndexStore, IndexWriter, verify
from medcbir.indexer.checksum import fast_checksum

from .conftest import FakeEncoder, Meta, clustered
from .test_store import flip_byte


@pytest.fixture
def ivf_index(tmp_path):
    """A trained IVF-PQ index: shards, per-shard codes files and the trained file."""
    x = clustered(600, dim=16)
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(16), index_spec="IVF8,PQ4x4,Refine(Flat)", shard_size=200) as w:
        w.add_embeddings([Meta(i) for i in range(600)], x)
    return tmp_path / "ix"


def _manifest(index_dir):
    return json.loads((index_dir / "manifest.json").read_text())


def test_every_committed_file_records_its_xxh3(ivf_index):
    m = _manifest(ivf_index)
    records = [m["trained"]] + m["shards"] + [s["faiss"] for s in m["shards"]]
    assert len(records) == 7
    for rec in records:
        # oracle: xxhash over the file's bytes read plainly (no mmap)
        assert rec["xxh3"] == xxhash.xxh3_64((ivf_index / rec["file"]).read_bytes()).hexdigest()


@pytest.mark.parametrize("victim", ["shard", "codes", "trained"])
def test_a_flipped_byte_is_caught_at_open_by_the_fast_checksum(ivf_index, victim):
    m = _manifest(ivf_index)
    name = {"shard": m["shards"][1]["file"], "codes": m["shards"][2]["faiss"]["file"], "trained": m["trained"]["file"]}[victim]
    flip_byte(ivf_index / name)
    with pytest.raises(IndexCorrupt, match=rf"^{name.replace('.', '[.]')}: checksum mismatch \(xxh3 "):
        IndexStore.open(ivf_index)
    assert not verify(ivf_index).ok


def test_open_checks_the_fast_checksum_and_sha256_mode_checks_sha256(ivf_index):
    # A manifest whose sha256 of one shard is wrong but whose xxh3 is right: the default open
    # (fast check) accepts it, verify="sha256" and `verify` name it: the two checks are independent.
    m = _manifest(ivf_index)
    m["shards"][0]["sha256"] = "0" * 64
    (ivf_index / "manifest.json").write_text(json.dumps(m))
    assert IndexStore.open(ivf_index).faiss_index.ntotal == 600
    with pytest.raises(IndexCorrupt, match=r"shard-000001\.h5: checksum mismatch \(sha256"):
        IndexStore.open(ivf_index, verify="sha256")
    assert verify(ivf_index).problems[0].startswith("shard-000001.h5: checksum mismatch (sha256")


def test_entries_without_xxh3_fall_back_to_sha256(ivf_index):
    m = _manifest(ivf_index)
    for s in m["shards"]:
        del s["xxh3"]
    (ivf_index / "manifest.json").write_text(json.dumps(m))
    assert IndexStore.open(ivf_index).faiss_index.ntotal == 600  # an index written before xxh3
    flip_byte(ivf_index / m["shards"][0]["file"])
    with pytest.raises(IndexCorrupt, match=r"shard-000001\.h5: checksum mismatch \(sha256"):
        IndexStore.open(ivf_index)


def test_fast_checksum_of_an_empty_file(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    assert fast_checksum(tmp_path / "e") == xxhash.xxh3_64(b"").hexdigest()
