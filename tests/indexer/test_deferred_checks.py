"""Shard checksums finished after open on a large index: no answer from a shard before its hash
matched, and a damaged file fails every later query by name."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest

from medcbir.engine import Engine
from medcbir.errors import IndexCorrupt
from medcbir.indexer import IndexStore, IndexWriter, deferred_checks, integrity

from .conftest import FakeEncoder, Meta, clustered
from .test_store import flip_byte

N, SHARD = 600, 200


@pytest.fixture
def ivf_index(tmp_path):
    x = clustered(N, dim=16)
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(16), index_spec="IVF8,SQ8,Refine(Shards)", shard_size=SHARD) as w:
        w.add_embeddings([Meta(i) for i in range(N)], x)
    return tmp_path / "ix", x


@pytest.fixture
def defer_all(monkeypatch):
    """Every index counts as large: its shard checksums are deferred."""
    monkeypatch.setattr(integrity, "DEFER_BYTES", 0)


def _shard_file(index_dir, number: int) -> str:
    return json.loads((index_dir / "manifest.json").read_text())["shards"][number]["file"]


def _flip_embedding_byte(path) -> None:
    """Damage a stored embedding value (the HDF5 structure stays readable)."""
    with h5py.File(path, "r") as f:
        offset = int(f["embeddings"].id.get_offset())
    flip_byte(path, offset + 7)


def test_a_small_index_is_checked_before_open_returns(ivf_index):
    index_dir, _ = ivf_index
    with IndexStore.open(index_dir) as store:
        assert store.checks is None


def test_deferred_open_answers_as_the_checked_open(ivf_index, defer_all, monkeypatch):
    index_dir, x = ivf_index
    with Engine(IndexStore.open(index_dir, verify="checksums")) as checked_late:
        assert checked_late.store.checks is not None
        late = checked_late.search(x[:20], k=5, include_self=True)
        checked_late.store.checks.wait()
        assert checked_late.store.checks.done and checked_late.store.checks.checked == checked_late.store.checks.files
    monkeypatch.setattr(integrity, "DEFER_BYTES", deferred_checks.DEFER_BYTES)
    with Engine.open(index_dir) as checked_first:
        assert checked_first.store.checks is None
        first = checked_first.search(x[:20], k=5, include_self=True)
    assert [[n.id for n in hits] for hits in late] == [[n.id for n in hits] for hits in first]


def test_an_answer_waits_for_the_checksums_of_its_own_shards(ivf_index, defer_all, monkeypatch):
    # Without the background thread, only the shards an answer comes from are hashed, by the query.
    monkeypatch.setattr(deferred_checks.DeferredChecks, "_run", lambda self: None)
    index_dir, x = ivf_index
    with Engine.open(index_dir) as engine:
        checks = engine.store.checks
        assert checks.checked == 0
        hits = engine.search(x[:1], k=3, include_self=True)[0]
        shards = {n.id // SHARD for n in hits}
        files_per_shard = checks.files // (N // SHARD)
        assert checks.checked == files_per_shard * len(shards) < checks.files


def test_a_damaged_shard_fails_the_query_that_would_answer_from_it(ivf_index, defer_all, monkeypatch):
    monkeypatch.setattr(deferred_checks.DeferredChecks, "_run", lambda self: None)
    index_dir, x = ivf_index
    name = _shard_file(index_dir, 1)
    _flip_embedding_byte(index_dir / name)
    with Engine.open(index_dir) as engine:  # the open itself no longer reads the shard through
        assert engine.search(x[:1], k=1, include_self=True)[0][0].id == 0  # shard 0 is intact
        with pytest.raises(IndexCorrupt, match=rf"^{name.replace('.', '[.]')}: checksum mismatch \(xxh3 "):
            engine.search(x[SHARD + 5:SHARD + 6], k=1, include_self=True)
        # the index is damaged: every later query fails the same way, even on intact shards
        with pytest.raises(IndexCorrupt, match=name.replace(".", "[.]")):
            engine.search(x[:1], k=1, include_self=True)
        with pytest.raises(IndexCorrupt, match=name.replace(".", "[.]")):
            engine.meta([0])


def test_the_background_thread_finds_a_shard_no_query_used(ivf_index, defer_all):
    index_dir, x = ivf_index
    name = _shard_file(index_dir, 2)
    _flip_embedding_byte(index_dir / name)
    with Engine.open(index_dir) as engine:
        checks = engine.store.checks
        deadline = time.monotonic() + 30
        while not checks.done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checks.failure is not None and name in str(checks.failure)
        with pytest.raises(IndexCorrupt, match=name.replace(".", "[.]")):
            engine.search(x[:1], k=1, include_self=True)
        with pytest.raises(IndexCorrupt, match=name.replace(".", "[.]")):
            checks.wait()


def test_a_damaged_codes_file_is_tied_to_its_shard(ivf_index, defer_all, monkeypatch):
    monkeypatch.setattr(deferred_checks.DeferredChecks, "_run", lambda self: None)
    index_dir, x = ivf_index
    codes = json.loads((index_dir / "manifest.json").read_text())["shards"][1]["faiss"]["file"]
    path = index_dir / codes
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a code byte of the shard's last item (the .npy header stays valid)
    path.write_bytes(bytes(data))
    with Engine.open(index_dir) as engine:
        engine.store.ensure_checked(np.arange(0, SHARD))  # shard 0: fine
        with pytest.raises(IndexCorrupt, match=codes.replace(".", "[.]")):
            engine.store.ensure_checked([SHARD + 1])


def test_closing_stops_the_background_thread(ivf_index, defer_all):
    index_dir, _ = ivf_index
    store = IndexStore.open(index_dir)
    thread = store.checks._thread
    store.close()
    assert not thread.is_alive()


def test_a_writer_on_a_large_index_commits_nothing_on_top_of_a_damaged_shard(ivf_index, defer_all):
    index_dir, x = ivf_index
    name = _shard_file(index_dir, 2)
    _flip_embedding_byte(index_dir / name)
    before = (index_dir / "manifest.json").read_text()
    writer = IndexWriter.open(index_dir, FakeEncoder(16), index_spec="IVF8,SQ8,Refine(Shards)", shard_size=SHARD)
    with pytest.raises(IndexCorrupt, match=rf"{name.replace('.', '[.]')}: checksum mismatch .*verify --repair"):
        writer.add_embeddings([Meta(N + i) for i in range(SHARD)], x[:SHARD])  # the open returned: checks deferred
        writer.close()
    writer.abort()
    assert (index_dir / "manifest.json").read_text() == before


def test_a_writer_on_an_intact_large_index_commits_once_the_checks_matched(ivf_index, defer_all):
    index_dir, x = ivf_index
    with IndexWriter.open(index_dir, FakeEncoder(16), index_spec="IVF8,SQ8,Refine(Shards)", shard_size=SHARD) as writer:
        writer.add_embeddings([Meta(N + i) for i in range(SHARD)], x[:SHARD])
    with IndexStore.open(index_dir, verify="sha256") as store:
        assert len(store.ids) == N + SHARD
