"""Retraining IVF/PQ as the index grows: swapped in by one commit, readers keep their generation."""

from __future__ import annotations

import importlib
import json

import threading

import numpy as np
import pytest

from medcbir.indexer import IndexStore, IndexWriter, verify
from medcbir.indexer.retrain import list_imbalance, retrain, retrain_due

from .conftest import FakeEncoder, Meta, clustered

SPEC = "IVF16,PQ8,Refine(Flat)"


def _add(ix, lo, x, shard_size=300):
    with IndexWriter.open(ix, FakeEncoder(16), index_spec=SPEC, shard_size=shard_size) as w:
        w.add_embeddings([Meta(i) for i in range(lo, lo + len(x))], x)


def _search(store, q, k=5):
    return store.faiss_index.search(q, k, params=store.search_parameters())[1]


@pytest.mark.slow
def test_retrain_swaps_atomically_while_a_reader_holds_the_old_generation(tmp_path):
    ix = tmp_path / "ix"
    first = clustered(600, dim=16, clusters=4, seed=1)
    _add(ix, 0, first)  # trained on these 600 at close
    old = IndexStore.open(ix)
    assert old.manifest["trained"]["items"] == 600 and not old.exact
    q = clustered(50, dim=16, clusters=4, seed=1)
    old_answer = _search(old, q)

    # The archive grows 8x with images unlike the first ones (other clusters).
    grown = clustered(4200, dim=16, clusters=20, seed=7)
    _add(ix, 600, grown)
    frozen = IndexStore.open(ix)
    assert retrain_due(ix, frozen.manifest) == "growth"
    frozen_imbalance = list_imbalance(ix, frozen.manifest)

    result = retrain(ix, reason="growth")
    new = IndexStore.open(ix)
    assert result["generation"] == new.generation == frozen.generation + 1
    assert new.manifest["trained"]["file"] != frozen.manifest["trained"]["file"]
    assert new.manifest["trained"]["items"] == 4800 and new.manifest["trained"]["reason"] == "growth"
    # Shards untouched (same files); only the trained file and codes changed.
    assert [s["file"] for s in new.manifest["shards"]] == [s["file"] for s in frozen.manifest["shards"]]
    assert all(a["faiss"]["file"] != b["faiss"]["file"] for a, b in zip(new.manifest["shards"], frozen.manifest["shards"]))
    assert retrain_due(ix, new.manifest) is None
    # The quantiser now fits all the data: the lists are more even than the frozen one's.
    assert list_imbalance(ix, new.manifest) < frozen_imbalance
    assert verify(ix).ok

    # The reader opened before both commits still answers from its generation, unchanged.
    assert old.generation < frozen.generation and len(old.ids) == 600
    np.testing.assert_array_equal(_search(old, q), old_answer)
    # Codes and ids line up: probing every list and re-ranking deeply (64 candidates: PQ8 alone can rank
    # 16 cluster-mates above an item), each item is its own nearest neighbour
    # (exact refine), and at equal search parameters the retrained index recalls at least as well.
    everything = np.concatenate([first, grown])
    probe = np.arange(0, 4800, 97)
    found = new.faiss_index.search(everything[probe], 1, params=new.search_parameters(nprobe=16, k_factor=64))[1]
    np.testing.assert_array_equal(found[:, 0], probe)
    exact = np.argsort(-(everything[probe] @ everything.T), axis=1)[:, :5]

    def recall(store, **params):
        found = store.faiss_index.search(everything[probe], 5, params=store.search_parameters(**params))[1]
        return np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact)])

    # the same search parameters for both (each index's own were tuned to its target, not to beat the other)
    for params in ({"nprobe": 2, "k_factor": 4}, {"nprobe": 4, "k_factor": 16}):
        assert recall(new, **params) >= recall(frozen, **params)


def test_a_writer_committing_during_a_retrain_is_carried_over(tmp_path, monkeypatch):
    import importlib

    mod = importlib.import_module("medcbir.indexer.retrain")  # the package exports a function of that name

    ix = tmp_path / "ix"
    _add(ix, 0, clustered(600, dim=16, seed=2))
    more = clustered(100, dim=16, seed=3)
    real = mod.faiss_index.train

    def train_then_someone_commits(*args, **kwargs):
        trained = real(*args, **kwargs)
        t = threading.Thread(target=_add, args=(ix, 600, more))  # another writer, mid-retrain
        t.start()
        t.join(30)
        return trained

    monkeypatch.setattr(mod.faiss_index, "train", train_then_someone_commits)
    result = retrain(ix)
    assert "skipped" not in result
    store = IndexStore.open(ix)
    assert len(store.ids) == 700 and store.faiss_index.ntotal == 700
    assert all(s["faiss"]["file"].startswith(s["file"].split(".")[0] + ".r") for s in store.manifest["shards"])
    assert verify(ix).ok


def test_retrain_cli(tmp_path, capsys):
    from medcbir.cli.main import main

    ix = tmp_path / "ix"
    _add(ix, 0, clustered(600, dim=16, seed=4))
    assert main(["retrain", str(ix), "--sample", "500", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("retrained on 500 of 600 item(s)")
    assert IndexStore.open(ix).manifest["trained"]["items"] == 500
    with IndexWriter.open(tmp_path / "flat", FakeEncoder(16), index_spec="Flat") as w:
        w.add_embeddings([Meta(0)], clustered(1, dim=16))
    # an exact index: a no-op with a message and exit 0 (cron jobs run it on every index)
    assert main(["retrain", str(tmp_path / "flat")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("index ") and captured.out.strip().endswith("nothing to retrain") and not captured.err
    assert main(["retrain", str(tmp_path / "flat"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["retrained"] is False
    assert main(["retrain", str(tmp_path / "nowhere")]) == 1  # a runtime error
    assert main(["retrain", str(tmp_path / "flat"), "--sample", "0"]) == 2  # a usage error


def test_recall_below_target_after_growth_retrains_with_a_finer_spec(tmp_path, monkeypatch):
    from medcbir.indexer import faiss_index

    from .test_recall import fitted_gaussian

    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 16)
    ix = tmp_path / "ix"

    def add(lo, x):
        with IndexWriter.open(ix, FakeEncoder(64), shard_size=1000, target_recall=0.95) as w:
            for start in range(0, len(x), 500):
                w.add_embeddings([Meta(i) for i in range(lo + start, lo + min(start + 500, len(x)))], x[start:start + 500])

    first = clustered(2500, dim=64, seed=3)
    add(0, first)  # auto trains at close: IVF-PQ reaches the target on these
    m = IndexStore.open(ix).manifest
    assert ",PQ" in m["index_spec"] and m["recall"]["recall_at_10"] >= 0.95 and m["recall"]["at_items"] == 2500
    assert retrain_due(ix, m) is None

    # The archive grows 1.6x with images in one narrow cone, where PQ cannot separate neighbours:
    # the writer re-measures at its close (grown >= 1.25x) and finds recall below the target.
    cone = fitted_gaussian(1500, seed=9)
    add(2500, cone)
    grown = IndexStore.open(ix)
    measured = grown.manifest["recall"]
    assert measured["at_items"] == 4000 and measured["recall_at_10"] < 0.95 and grown.index_spec == m["index_spec"]
    assert retrain_due(ix, grown.manifest) == "recall"  # not growth: 4000 < 8 x 2500

    # candidates that all miss the target and all measure worse than the index they would replace:
    # the index is kept (a retraining once committed the last candidate tried, however bad)
    coarse = retrain(ix, specs=["IVF16,PQ1", "IVF16,PQ2"], reason="recall")
    assert coarse["skipped"] and coarse["tried"] and {t["spec"] for t in coarse["tried"]} <= {"IVF16,PQ1", "IVF16,PQ2"}
    assert all(t["recall_at_10"] < measured["recall_at_10"] for t in coarse["tried"])
    kept = IndexStore.open(ix)
    assert kept.index_spec == grown.index_spec and kept.manifest["shards"] == grown.manifest["shards"]
    assert not list(ix.glob(".staging-*"))
    # the attempt is recorded, so maintenance does not retrain again and again until the archive doubles
    assert kept.generation == grown.generation + 1 and kept.manifest["trained"]["kept_at"] == 4000
    assert retrain_due(ix, kept.manifest) is None
    assert retrain_due(ix, {**kept.manifest, "next_id": 8000}) is not None  # twice the items: due again

    result = retrain(ix, reason="recall")
    new = IndexStore.open(ix)
    assert result["generation"] == new.generation == kept.generation + 1  # one commit
    assert ",PQ" not in new.index_spec and new.index_spec == result["spec"] == new.manifest["recall"]["spec"]
    # measured on all 4000 items, before the commit, and held
    assert new.manifest["recall"]["items"] == 4000 and new.manifest["recall"]["recall_at_10"] >= 0.95
    assert new.search_params == new.manifest["recall"]["params"]
    assert retrain_due(ix, new.manifest) is None
    # independent check: every item's exact top 10 among all items (itself dropped), through the store
    everything = np.concatenate([first, cone])
    probe = np.arange(0, 4000, 37)
    _, ids = new.faiss_index.search(everything[probe], 11, params=new.search_parameters())
    truth = np.argsort(-(everything[probe] @ everything.T), axis=1)[:, :11]
    got = np.mean([len(set(a[a != p][:10]) & set(t[t != p][:10])) / 10 for a, t, p in zip(ids, truth, probe)])
    assert got >= 0.93
    assert verify(ix).ok


def test_auto_lists_grow_with_the_archive_and_retrain_when_due(tmp_path, monkeypatch):
    from medcbir.indexer import faiss_index, recall
    from medcbir.indexer.background import run_due

    # the defaults: 1,024 lists where auto leaves exact search, ~4·√n beyond, bounded
    assert [faiss_index.auto_nlist(n) for n in (65_536, 262_144, 1_000_000, 10_000_000, 10**9)] == [1024, 2048, 4096, 8192, 8192]
    assert faiss_index.train_sample(1_000_000) == 39 * 4096 + 200 and faiss_index.train_sample(10**9) == 39 * faiss_index.AUTO_NLIST_MAX + 200
    assert faiss_index.train_sample(50_000) == 50_000 and faiss_index.auto_nlist(10_000) == 10_000 // 39
    assert recall.candidates(64, 160_000, items=1_000_000)[0].startswith("IVF4096,") and faiss_index.HELD_OUT == recall.QUERIES

    # the search grid probes up to 1/8 of the lists, however many there are
    assert max(p["nprobe"] for p in recall.grid_for("PCAU256,IVF4096,SQ8,Refine(SQfp16)")) == 512
    assert max(p["nprobe"] for p in recall.grid_for("IVF1024,PQ64,Refine(Flat)")) == 128

    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 1000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 8)
    monkeypatch.setattr(faiss_index, "TRAIN_SAMPLE", 1500)
    retrain_module = importlib.import_module("medcbir.indexer.retrain")  # the package re-exports the function

    monkeypatch.setattr(retrain_module, "IN_RAM_BYTES", 0)  # the streamed path: shard by shard, exact neighbours by blocks
    ix = tmp_path / "ix"

    def add(lo, x):
        with IndexWriter.open(ix, FakeEncoder(32), shard_size=1000, target_recall=0.9) as w:
            w.add_embeddings([Meta(i) for i in range(lo, lo + len(x))], x)

    x = clustered(5200, dim=32, seed=21)
    add(0, x[:1200])  # trained at 1,200 items: 8 lists
    m = IndexStore.open(ix).manifest
    assert m["index_spec"].startswith("IVF8,") and retrain_due(ix, m) is None
    add(1200, x[1200:4200])  # 4,200 items: 4.2x where auto left exact search -> 16 lists, twice those trained
    m = IndexStore.open(ix).manifest
    assert m["index_spec"].startswith("IVF8,") and retrain_due(ix, m) == "lists"
    done = run_due(ix)
    assert done["retrain"]["reason"] == "lists"
    with IndexStore.open(ix) as store:
        assert store.index_spec.startswith("IVF16,") and store.manifest["trained"]["reason"] == "lists"
        assert store.manifest["recall"]["items"] == 4200 and store.manifest["recall"]["recall_at_10"] >= 0.9
        assert retrain_due(ix, store.manifest) is None
    assert verify(ix).ok
