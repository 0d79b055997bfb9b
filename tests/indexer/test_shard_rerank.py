"""Re-rank from the shards (``…,Refine(Shards)``): the chain holds only its base codes in RAM and
re-scores each query's candidates with the full-dimension embeddings memory-mapped from the HDF5
shards; and shard storage chosen by what it costs the chain's recall."""

from __future__ import annotations

import json

import faiss
import h5py
import numpy as np
import pytest

from medcbir.indexer import IndexStore, IndexWriter, compact, compression, faiss_index, recall, verify
from medcbir.indexer.rerank import RerankFromRows

from .conftest import FakeEncoder, Meta, clustered


def _write(path, x, lo=0, chunk=500, **kw):
    with IndexWriter.open(path, FakeEncoder(x.shape[1]), shard_size=500, **kw) as w:
        for start in range(0, len(x), chunk):
            w.add_embeddings([Meta(lo + i) for i in range(start, min(start + chunk, len(x)))], x[start:start + chunk])


def _recall(found, exact):
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / exact.shape[1] for a, b in zip(found, exact)]))


@pytest.fixture
def small_auto(monkeypatch):
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 16)
    monkeypatch.setattr(compression, "PROJECTION_DIMS", (8, 16, 32))
    monkeypatch.setattr(compression, "SHARD_RERANK_DIMS", (16,))


def test_shard_rerank_chain_round_trip(tmp_path, small_auto):
    x = clustered(3000, dim=64, seed=1)
    ix = tmp_path / "ix"
    _write(ix, x[:2500], memory_budget="100", shard_dtype="float16")
    m = json.loads((ix / "manifest.json").read_text())
    assert m["index_spec"] == "PCAU16,IVF16,SQ8,Refine(Shards)", m["index_spec"]
    chain = m["recall"]["chain"]
    assert chain["rerank"] == "shards" and chain["projection"] == "PCAU16" and chain["codes"] == "SQ8"
    assert m["recall"]["recall_at_10_low"] >= 0.95, m["recall"]

    store = IndexStore.open(ix)
    index = store.faiss_index
    assert isinstance(index, RerankFromRows) and index.ntotal == 2500 and not store.exact
    # RAM: FAISS holds the base alone (codes + ids): no re-rank store, and the codes files carry the base's code only
    projection, base, refine = faiss_index.chain_levels(index.base_index)
    assert refine is None and chain["bytes_per_item"] == base.code_size + 8
    assert np.load(ix / m["shards"][0]["faiss"]["file"]).shape == (500, base.sa_code_size())
    q = x[2900:]  # new images to the index
    _, exact = faiss.knn(q, x[:2500], 10, metric=faiss.METRIC_INNER_PRODUCT)
    scores, got = index.search(q, 10, params=store.search_parameters())
    assert _recall(got, exact) >= 0.95
    # the scores are exact inner products with the stored (float16-rounded) embeddings, read from memory maps
    stored = store.embeddings(got.ravel()).reshape(len(q), 10, 64)
    assert np.allclose(scores, np.einsum("bkd,bd->bk", stored, q), atol=1e-5)
    assert all(isinstance(mm, np.memmap) for mm in store._maps)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # deeper re-rank finds at least as much
    _, deep = index.search(q, 10, params=store.search_parameters(k_factor=64, nprobe=16))
    assert _recall(deep, exact) >= _recall(got, exact) - 1e-9
    store.close()

    # growth: new shards get base codes, the store re-ranks them too; verify passes
    _write(ix, x[2500:], lo=2500)
    store = IndexStore.open(ix)
    _, exact = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert store.faiss_index.ntotal == 3000 and _recall(got, exact) >= 0.95
    assert set(got.ravel().tolist()) & set(range(2900, 3000))  # the queries themselves, now indexed
    store.close()
    assert verify(ix).ok


def test_filters_tombstones_compact_and_retrain_with_the_shard_chain(tmp_path, small_auto):
    from medcbir.engine import Engine
    from medcbir.indexer.retrain import retrain

    x = clustered(3000, dim=32, seed=2)
    ix = tmp_path / "ix"
    _write(ix, x, index_spec="PCAU16,IVF16,SQ8,Refine(Shards)", shard_dtype="sq8")
    with IndexWriter.open(ix, FakeEncoder(32)) as w:
        w.delete_sources([f"/synthetic/{i}.dcm" for i in range(0, 3000, 3)])
    deleted = np.arange(0, 3000, 3)
    q = np.ascontiguousarray(x[1::10])
    live = np.setdiff1d(np.arange(3000), deleted)
    engine = Engine.open(ix)
    try:
        stored = engine.embeddings(np.arange(3000))
        _, exact_live = faiss.knn(q, stored[live], 10, metric=faiss.METRIC_INNER_PRODUCT)
        exact_live = live[exact_live]
        _, ids = engine.search_groups(q, 10, engine.live, {None: list(range(len(q)))})
        assert not set(ids.ravel().tolist()) & set(deleted.tolist())
        assert _recall(ids, exact_live) >= 0.9
        # a filter: only even ids admissible (inside FAISS, through the re-rank's base parameters)
        even = engine.live & (np.arange(3000) % 2 == 0)
        _, ids = engine.search_groups(q, 10, even, {None: list(range(len(q)))})
        assert (ids >= 0).all() and (ids % 2 == 0).all() and not set(ids.ravel().tolist()) & set(deleted.tolist())
    finally:
        engine.close()

    compact(ix)
    m = json.loads((ix / "manifest.json").read_text())
    assert m["index_spec"] == "PCAU16,IVF16,SQ8,Refine(Shards)" and m["next_id"] == len(live)
    store = IndexStore.open(ix)
    _, exact = faiss.knn(q, stored[live], 10, metric=faiss.METRIC_INNER_PRODUCT)  # compacted ids = rank among the live
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert isinstance(store.faiss_index, RerankFromRows) and _recall(got, exact) >= 0.9
    store.close()

    out = retrain(ix)
    m = json.loads((ix / "manifest.json").read_text())
    assert out["spec"] == m["index_spec"] == "PCAU16,IVF16,SQ8,Refine(Shards)" and m["recall"]["chain"]["rerank"] == "shards"
    assert m["recall"]["recall_at_10"] >= 0.9
    store = IndexStore.open(ix)
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert _recall(got, exact) >= 0.9
    store.close()
    assert verify(ix).ok


def test_spec_helpers_know_the_shard_rerank():
    spec = "PCAU16,IVF16,SQ8,Refine(Shards)"
    assert faiss_index.reranks_from_shards(spec) and faiss_index.faiss_part(spec) == "PCAU16,IVF16,SQ8"
    assert not faiss_index.reranks_from_shards("PCAU16,IVF16,SQ8,Refine(SQfp16)")
    assert faiss_index.validate_spec(spec, 64) == spec
    assert compression.bytes_per_item(spec, 64) == 16 + 8
    assert compression.describe(spec, 64)["rerank"] == "shards"
    assert recall.grid_for(spec) == recall.GRIDS["ivf_refine"]
    from medcbir.errors import ConfigError

    with pytest.raises(ConfigError, match="exact"):
        faiss_index.validate_spec("Flat,Refine(Shards)", 64)
    # under a budget the shard chains come first, then the in-RAM ladder
    specs = compression.compact_candidates(512, 1024)
    assert specs[:2] == ["PCAU128,IVF1024,SQ8,Refine(Shards)", "PCAU256,IVF1024,SQ8,Refine(Shards)"]


def _grid(n, dim, seed, corners=0.2):
    """Vectors whose every value sits at the centre of one of 8-bit FAISS's 256 steps over the
    range -0.5..0.5, with a fifth of the rows at the range's ends (each block of rows then
    spans the whole range): 8-bit scalar quantisation decodes them exactly."""
    rng = np.random.default_rng(seed)
    x = clustered(n, dim=dim, seed=seed)
    k = np.clip(np.floor((x / np.abs(x).max() * 0.5 + 0.5) * 255), 0, 254)
    g = (k + 0.5) / 255 - 0.5
    ends = rng.random(n) < corners
    g[ends] = np.where(rng.random((int(ends.sum()), dim)) < 0.5, -0.5, 0.5)
    return g.astype(np.float32)


def test_chain_storage_rule_accepts_what_costs_nothing_and_refuses_what_costs_recall():
    spec, params = "PCAU8,IVF8,SQ8,Refine(Shards)", {"nprobe": 4, "k_factor": 16}
    free = _grid(2000, 16, seed=3)
    out = recall.choose_chain_storage(free, spec, params, shard_size=500, storages=("sq8",))
    assert out["dtype"] == "sq8" and out["tried"]["sq8"] >= out["reference"] - recall.STORAGE_TOLERANCE, out
    costly = clustered(2000, dim=64, seed=1)
    out = recall.choose_chain_storage(costly, spec, params, shard_size=500, storages=("sq6", "sq8"))
    assert out["dtype"] is None and max(out["tried"].values()) < out["reference"] - recall.STORAGE_TOLERANCE, out
    assert set(out["tried"]) == {"sq6", "sq8"} and out["queries"] == 500 and out["items"] == 2000


def test_auto_storage_turns_to_scalar_codes_when_the_chain_loses_nothing(tmp_path, small_auto, monkeypatch):
    # the first-shard (exact) rule limited to float16, so that only the chain rule can choose 8 or 6 bits;
    # the scalar codes alone (the transform codes: test_transform_codec.py)
    monkeypatch.setattr(compression, "AUTO_STORAGES", ("float16",))
    monkeypatch.setattr(recall, "CHAIN_STORAGES", ("sq6", "sq8"))
    x = _grid(3000, 32, seed=4)
    ix = tmp_path / "free"
    _write(ix, x, memory_budget="100", shard_dtype="auto")
    m = json.loads((ix / "manifest.json").read_text())
    storage = m["storage"]
    assert m["index_spec"].endswith("Refine(Shards)")
    chosen, tried = storage["dtype"], storage["chain"]["tried"]
    assert storage["requested"] == "auto" and chosen in ("sq6", "sq8"), storage
    assert storage["chain"]["from"] == "float16" and storage["chain"]["spec"] == m["index_spec"]
    # the fewest bytes within the tolerance: sq6 first, sq8 only when sq6 costs more
    assert tried[chosen] >= storage["chain"]["reference"] - recall.STORAGE_TOLERANCE
    assert chosen == "sq6" or tried["sq6"] < storage["chain"]["reference"] - recall.STORAGE_TOLERANCE
    dtypes = []
    for entry in m["shards"]:
        with h5py.File(ix / entry["file"], "r") as f:
            dtypes.append(str(f.attrs.get("embeddings_codec", f["embeddings"].dtype)))
    # shards written before training keep float16, the ones after are scalar codes: both re-rank
    assert dtypes[:4] == ["float16"] * 4 and dtypes[-1] == chosen, dtypes
    store = IndexStore.open(ix)
    q = np.ascontiguousarray(x[::31])
    _, exact = faiss.knn(q, store.embeddings(np.arange(3000)), 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert _recall(got, exact) >= 0.9
    store.close()
    assert verify(ix).ok

    # where 8 bits reorder neighbours the chain sees it, and the shards stay float16
    y = clustered(3000, dim=64, seed=1)
    _write(tmp_path / "costly", y, memory_budget="100", shard_dtype="auto")
    storage = json.loads((tmp_path / "costly" / "manifest.json").read_text())["storage"]
    assert storage["dtype"] == "float16" and storage["chain"]["dtype"] is None, storage
    assert storage["chain"]["tried"]["sq8"] < storage["chain"]["reference"] - recall.STORAGE_TOLERANCE


def _search_both(ix, q):
    """(answers with the persisted lists, answers of the same generation filled from the codes)."""
    with_lists = IndexStore.open(ix)
    manifest = {k: v for k, v in with_lists.manifest.items() if k != "lists"}
    without = IndexStore.open(ix, manifest=manifest)
    try:
        assert with_lists.lists_used and not without.lists_used
        return (with_lists.faiss_index.search(q, 10, params=with_lists.search_parameters()),
                without.faiss_index.search(q, 10, params=without.search_parameters()))
    finally:
        with_lists.close()
        without.close()


@pytest.mark.parametrize("spec", ["PCAU16,IVF16,SQ8,Refine(Shards)", "IVF16,PQ8,Refine(Flat)"])
def test_persisted_lists_are_mapped_at_open_and_kept_current(tmp_path, small_auto, monkeypatch, spec):
    from medcbir.indexer import writer
    from medcbir.indexer.retrain import retrain

    monkeypatch.setattr(writer, "LISTS_TAIL", 1000)
    x = clustered(4500, dim=64, seed=5)
    ix = tmp_path / "ix"
    q = np.ascontiguousarray(x[4400:])
    _write(ix, x[:3000], index_spec=spec)
    m = json.loads((ix / "manifest.json").read_text())
    lists = m["lists"]
    assert lists["items"] == 3000 and lists["shards"] == 6 and lists["trained"] == m["trained"]["file"]
    assert (ix / lists["file"]).stat().st_size == lists["bytes"]
    (a_scores, a_ids), (b_scores, b_ids) = _search_both(ix, q)
    assert np.array_equal(a_ids, b_ids) and np.array_equal(a_scores, b_scores)
    # fewer new items than LISTS_TAIL: the lists stay, the new shards' codes are stacked after them
    _write(ix, x[3000:3500], lo=3000)
    m = json.loads((ix / "manifest.json").read_text())
    assert m["lists"] == lists and m["next_id"] == 3500
    (a_scores, a_ids), (b_scores, b_ids) = _search_both(ix, q)
    # the mapped lists and the new shards' lists are searched as two parts merged by score: the same
    # answers, except where approximate scores tie exactly at the re-rank's cut (PQ codes can)
    assert np.mean(np.all(a_ids == b_ids, axis=1)) >= 0.95 and (a_ids >= 3000).any()
    assert np.allclose(a_scores[np.all(a_ids == b_ids, axis=1)], b_scores[np.all(a_ids == b_ids, axis=1)])
    assert verify(ix).ok
    # a damaged lists file is named at open
    raw = bytearray((ix / lists["file"]).read_bytes())
    raw[-5] ^= 0xFF
    (ix / lists["file"]).write_bytes(bytes(raw))
    from medcbir.errors import IndexCorrupt

    with pytest.raises(IndexCorrupt, match=lists["file"]):
        IndexStore.open(ix)
    raw[-5] ^= 0xFF
    (ix / lists["file"]).write_bytes(bytes(raw))
    # enough new items: the close writes them again, over every shard
    _write(ix, x[3500:4500], lo=3500)
    m = json.loads((ix / "manifest.json").read_text())
    assert m["lists"]["items"] == 4500 and m["lists"]["file"] != lists["file"]
    (a_scores, a_ids), (b_scores, b_ids) = _search_both(ix, q)
    assert np.array_equal(a_ids, b_ids)
    # retraining replaces the codes: the lists are dropped (the next close writes new ones)
    retrain(ix)
    m = json.loads((ix / "manifest.json").read_text())
    assert "lists" not in m
    store = IndexStore.open(ix)
    assert not store.lists_used and store.faiss_index.ntotal == 4500
    store.close()


def test_compaction_keeps_lists_of_an_untouched_prefix_only(tmp_path, small_auto, monkeypatch):
    from medcbir.indexer import writer

    monkeypatch.setattr(writer, "LISTS_TAIL", 1000)
    x = clustered(3000, dim=64, seed=6)
    ix = tmp_path / "ix"
    _write(ix, x, memory_budget="100")
    assert json.loads((ix / "manifest.json").read_text())["lists"]["items"] == 3000
    with IndexWriter.open(ix, FakeEncoder(64)) as w:
        w.delete_sources([f"/synthetic/{i}.dcm" for i in range(2600, 2700)])
    compact(ix)  # the last shard(s) rewritten: the recorded lists no longer describe the codes
    m = json.loads((ix / "manifest.json").read_text())
    assert faiss_index.covered_lists(m) is None
    store = IndexStore.open(ix)
    q = np.ascontiguousarray(x[::37])
    _, exact = faiss.knn(q, store.embeddings(np.arange(len(store))), 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert not store.lists_used and store.faiss_index.ntotal == 2900 and _recall(got, exact) >= 0.9
    store.close()


KILLED = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from tests.indexer.conftest import FakeEncoder, Meta, clustered
from medcbir.indexer import IndexWriter, compression, faiss_index, writer
faiss_index.AUTO_FLAT_MAX, faiss_index.AUTO_NLIST, writer.LISTS_TAIL = 2000, 16, 1000
compression.SHARD_RERANK_DIMS = (16,)
x = clustered(3000, dim=64, seed=7)
with IndexWriter.open(sys.argv[1], FakeEncoder(64), shard_size=500, memory_budget="100") as w:
    w.add_embeddings([Meta(i) for i in range(3000)], x)
"""


@pytest.mark.parametrize("point", ["lists-fsync:1", "manifest-rename:8"])
def test_killed_while_persisting_lists(tmp_path, point):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    ix = tmp_path / "ix"
    env = {**os.environ, "MEDCBIR_TEST_KILL_AT": point, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(ix), str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    m = json.loads((ix / "manifest.json").read_text())
    assert "lists" not in m and m["next_id"] == 3000 and m["trained"]  # the last commit before the kill rules
    assert any(p.name.startswith(("lists-", ".lists-")) for p in ix.iterdir())  # what the kill left
    store = IndexStore.open(ix)
    assert not store.lists_used and store.faiss_index.ntotal == 3000
    store.close()
    assert verify(ix).ok
    # the next writer removes the leftover; its close writes the lists again
    env.pop("MEDCBIR_TEST_KILL_AT")
    code = KILLED.replace("range(3000)], x)", "range(3000, 3000)], x[:0])")
    proc = subprocess.run([sys.executable, "-c", code, str(ix), str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((ix / "manifest.json").read_text())
    assert m["lists"]["items"] == 3000
    assert sorted(p.name for p in ix.iterdir() if "lists-" in p.name) == [m["lists"]["file"]]
    store = IndexStore.open(ix)
    assert store.lists_used
    store.close()
