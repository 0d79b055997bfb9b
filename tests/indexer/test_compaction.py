"""Online compaction: small shards merged, tombstones dropped, every live item kept."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medcbir.indexer import IndexStore, IndexWriter, compact, delete, verify
from medcbir.indexer.compaction import compaction_due

from .conftest import FakeEncoder, Meta, clustered


def _small_commits(index_dir, n=120, batch=6, spec="IVF4,PQ4x4,Refine(Flat)"):
    """n items committed `batch` at a time (many small shards, like the Orthanc plugin)."""
    x = clustered(n, dim=16)
    metas = []
    for i in range(n):
        m = Meta(i, series=i // 30)
        metas.append(m)
    with IndexWriter.open(index_dir, FakeEncoder(16), shard_size=40, index_spec=spec) as w:
        for lo in range(0, n, batch):
            w.add_embeddings(metas[lo:lo + batch], x[lo:lo + batch])
            w.commit()
    return x


def _live(store):
    """{sop uid: embedding} of the live items of an open store (the oracle of what must survive)."""
    live = store.ids[store.live_mask]
    emb = store.embeddings(live)
    return {str(store.columns["sop_instance_uid"][i]): emb[j] for j, i in enumerate(live)}


@pytest.mark.parametrize("spec", ["Flat", "IVF4,PQ4x4,Refine(Flat)"])
def test_compaction_preserves_every_live_item_and_drops_tombstones(tmp_path, spec):
    ix = tmp_path / "ix"
    _small_commits(ix, spec=spec)
    before = IndexStore.open(ix)
    assert len(before.manifest["shards"]) == 20 and compaction_due(before.manifest)
    assert delete(ix, series=["1.2.9.1"]) == 30
    tombstoned = IndexStore.open(ix)
    live_before = _live(tombstoned)
    assert len(live_before) == 90

    result = compact(ix)
    after = IndexStore.open(ix)
    assert result["removed"] == 30 and result["items"] == 90
    assert after.deleted.size == 0 and np.array_equal(after.ids, np.arange(90))
    assert [s["items"] for s in after.manifest["shards"]] == [42, 42, 6]  # filled to 40+, cut between old shards
    live_after = _live(after)
    assert live_after.keys() == live_before.keys()
    for sop, emb in live_before.items():
        np.testing.assert_array_equal(live_after[sop], emb)
    assert verify(ix).ok
    # Search finds each live item as its own nearest neighbour; none of the dropped ones.
    q = np.stack(list(live_before.values()))
    after.set_search_params(nprobe=4, k_factor=64)  # every list, exact re-ranking: no approximation left
    _, found = after.faiss_index.search(q, 1)
    assert [str(after.columns["sop_instance_uid"][i]) for i in found[:, 0]] == list(live_before.keys())
    # The reader opened before keeps its generation.
    assert len(before.ids) == 120 and before.embeddings(np.array([119])).shape == (1, 16)
    assert compact(ix)["rewritten"] == 0  # nothing left to do


def test_compaction_runs_while_a_writer_commits(tmp_path, monkeypatch):
    """Commits and tombstones landing during the rewrite are carried into the new generation."""
    import medcbir.indexer.compaction as compaction

    ix = tmp_path / "ix"
    _small_commits(ix, n=60, spec="Flat")
    delete(ix, sop=["1.2.3.0"])
    x = clustered(100, dim=16, seed=5)
    real_add_shard = compaction.TailRewriter.add_shard
    done = threading.Event()

    def concurrent_writer():  # another process's work, committed mid-compaction
        with IndexWriter.open(ix, FakeEncoder(16), shard_size=40) as w:
            w.add_embeddings([Meta(i) for i in range(60, 70)], x[60:70])
        delete(ix, sop=["1.2.3.5", "1.2.3.65"])
        done.set()

    calls = []

    def add_shard(self, entry, deleted):
        calls.append(entry["file"])
        if len(calls) == 2:  # the snapshot's rewrite is under way, without the lock
            t = threading.Thread(target=concurrent_writer)
            t.start()
            t.join(30)
        return real_add_shard(self, entry, deleted)

    monkeypatch.setattr(compaction.TailRewriter, "add_shard", add_shard)
    result = compact(ix)
    assert done.is_set() and "skipped" not in result
    store = IndexStore.open(ix)
    sops = set(map(str, store.columns["sop_instance_uid"][store.live_mask]))
    assert sops == {f"1.2.3.{i}" for i in range(70)} - {"1.2.3.0", "1.2.3.5", "1.2.3.65"}
    # 5 was tombstoned during the rewrite of its shard: it stays, tombstoned under its new id;
    # 65 (in a shard committed meanwhile, rewritten under the lock) and 0 are dropped.
    assert len(store.ids) == 68 and store.deleted.size == 1
    assert str(store.columns["sop_instance_uid"][store.deleted[0]]) == "1.2.3.5"
    assert verify(ix).ok


def test_background_maintenance_compacts_a_plugin_like_index(tmp_path, capsys):
    """The plugin's path: many small commits, then a poke runs the compaction on its own thread."""
    from medcbir.cli.main import main
    from medcbir.indexer.background import BackgroundMaintenance

    ix = tmp_path / "ix"
    _small_commits(ix, spec="Flat")
    before = IndexStore.open(ix)
    maintenance = BackgroundMaintenance(ix)
    assert maintenance.poke()
    maintenance.join(60)
    assert not maintenance.error and maintenance.last["compact"]["rewritten"] == 20
    after = IndexStore.open(ix)
    assert [s["items"] for s in after.manifest["shards"]] == [42, 42, 36]
    assert _live(after).keys() == _live(before).keys()
    # The CLI: nothing left to merge.
    assert main(["compact", str(ix)]) == 0
    assert capsys.readouterr().out.startswith("removed 0 item(s), rewrote 0 shard(s); 120 item(s) in 3 shard(s)")
