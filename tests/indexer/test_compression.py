"""Compact vectors: learned projection + codes + compact re-rank chosen under a memory budget,
float16 shards, streamed re-measurement, and an index written before these still opening."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from medcbir.errors import ConfigError
from medcbir.indexer import IndexStore, IndexWriter, compression, faiss_index, recall, remeasure, verify

from .conftest import FakeEncoder, Meta, clustered

BEFORE = Path(__file__).parent / "data" / "index_before_compact"


def _write(path, x, lo=0, chunk=500, **kw):
    with IndexWriter.open(path, FakeEncoder(x.shape[1]), shard_size=500, **kw) as w:
        for start in range(0, len(x), chunk):
            w.add_embeddings([Meta(lo + i) for i in range(start, min(start + chunk, len(x)))], x[start:start + chunk])


def _recall(store, x, q, k=10):
    _, exact = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    _, got = store.faiss_index.search(q, k, params=store.search_parameters())
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, got)])


@pytest.fixture
def small_auto(monkeypatch):
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 16)
    monkeypatch.setattr(compression, "PROJECTION_DIMS", (8, 16, 32))


def test_projection_codes_and_rerank_round_trip_under_a_memory_budget(tmp_path, small_auto):
    x = clustered(3000, dim=64, seed=1)
    ix = tmp_path / "ix"
    _write(ix, x[:2500], memory_budget="100")  # 100 bytes/item: no full-dimension chain fits (64-d float32 = 256 B)
    m = json.loads((ix / "manifest.json").read_text())
    spec = m["index_spec"]
    assert spec.startswith("PCAU") and m["memory_budget"] == 100
    chain = m["recall"]["chain"]
    assert chain["projection"] == spec.split(",")[0] and chain["rerank"] in ("SQ8", "SQfp16")
    assert chain["bytes_per_item"] <= 100
    # chosen on held-out queries at 2,000 items, re-measured on all items at the writer's close (2,500 ≥ 1.25×)
    assert m["recall"]["at_items"] == 2500 and m["recall"]["recall_at_10_low"] >= 0.95, m["recall"]
    assert all(t["spec"].startswith("PCAU") for t in m["recall"]["tried"])

    # per shard one codes file: the base's code then the re-rank store's, the width FAISS gives
    store = IndexStore.open(ix)
    projection, base, refine = faiss_index.chain_levels(store.faiss_index)
    codes = np.load(ix / m["shards"][0]["faiss"]["file"])
    assert codes.shape == (500, base.sa_code_size() + refine.sa_code_size())
    assert projection.d_out == chain["dims"] < 64
    # the manifest's bytes per item are what FAISS holds: code + id per item in the lists, plus the store
    assert chain["bytes_per_item"] == base.code_size + 8 + refine.sa_code_size()
    q = x[2900:]  # not indexed yet: new images to the index
    assert _recall(store, x[:2500], q) >= 0.9
    # the codes route gives the same answers as adding the vectors to the trained index
    trained = faiss.read_index(str(ix / m["trained"]["file"]))
    trained.add(x[:2500])
    faiss_index.apply_search_params(trained, store.search_params)
    assert np.array_equal(trained.search(q, 10)[1], store.faiss_index.search(q, 10)[1])
    store.close()

    # growth: new shards get codes of the same chain, the store opens them all; verify passes
    _write(ix, x[2500:], lo=2500)
    store = IndexStore.open(ix)
    assert store.faiss_index.ntotal == 3000 and _recall(store, x, q) >= 0.9
    store.close()
    assert verify(ix).ok
    # maintenance reads the chain's codes like any IVF index's
    from medcbir.indexer.retrain import list_imbalance, retrain_due

    manifest = json.loads((ix / "manifest.json").read_text())
    assert list_imbalance(ix, manifest) >= 1.0
    assert retrain_due(ix, manifest) in (None, "recall", "imbalance")


def test_memory_budget_filters_the_ladder_and_bytes_match_faiss(monkeypatch):
    monkeypatch.setattr(compression, "PROJECTION_DIMS", (8, 16))
    dim, x = 64, clustered(600, dim=64, seed=2)
    specs = compression.compact_candidates(dim, 4)
    assert len(specs) == 6 and all(s.startswith(("PCAU8,", "PCAU16,")) for s in specs)
    for spec in specs + ["IVF4,PQ8x4,Refine(Flat)", "IVF4,SQ8,Refine(Flat)"]:
        index = faiss_index.train(spec, dim, x)
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else faiss.downcast_index(index)
        base, refine = faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)
        assert compression.bytes_per_item(spec, dim) == base.code_size + 8 + refine.sa_code_size(), spec
    assert recall.candidates(dim, 100_000) == recall.candidates(dim, 100_000, None)  # no budget: the ladder of before
    assert not any(s.startswith("PCAU") for s in recall.candidates(dim, 100_000))
    under = recall.candidates(dim, 100_000, 60)
    assert under and all(compression.bytes_per_item(s, dim) <= 60 for s in under) and "Flat" not in under
    assert recall.candidates(dim, 100_000, 1e9)[-1] == "Flat"
    with pytest.raises(RuntimeError, match="memory budget"):
        recall.choose(x, budget=1)


def test_parse_budget_and_spec_validation():
    assert compression.parse_budget("1KB") == 1000 and compression.parse_budget("1.5KiB") == 1536 and compression.parse_budget(700) == 700
    for bad in ("lots", "-1", "0", "3 parsecs"):
        with pytest.raises(ConfigError):
            compression.parse_budget(bad)
    assert faiss_index.validate_spec("PCAU16,IVF8,SQ8,Refine(SQfp16)", 64) == "PCAU16,IVF8,SQ8,Refine(SQfp16)"
    with pytest.raises(ConfigError, match="fewer dimensions"):
        faiss_index.validate_spec("PCAU64,IVF8,SQ8", 64)
    with pytest.raises(ConfigError):
        faiss_index.validate_spec("PCAU16,IVF8,Bogus", 64)


def test_uncentred_projection_keeps_inner_products_in_the_subspace():
    # vectors in an 8-d subspace: the projection to 8 dims keeps every inner product
    x = clustered(2000, dim=64, intrinsic=8, seed=3)
    x -= 0.05 * 0  # (clustered adds isotropic noise: not exactly in the subspace)
    projection = compression.fit_projection(x, 16)
    p = projection.apply(x)
    assert np.abs((p[:50] @ p.T) - (x[:50] @ x.T)).max() < 0.05
    a = faiss.vector_to_array(projection.A).reshape(16, 64)
    assert np.allclose(a @ a.T, np.eye(16), atol=1e-4) and not faiss.vector_to_array(projection.b).any()


def test_float16_shards_hold_embeddings_within_1e3_and_verify(tmp_path):
    x = clustered(1200, dim=32, seed=4)
    ix = tmp_path / "f16"
    _write(ix, x, shard_dtype="float16")
    m = json.loads((ix / "manifest.json").read_text())
    assert m["storage"]["dtype"] == "float16"
    with h5py.File(ix / m["shards"][0]["file"], "r") as f:
        assert f["embeddings"].dtype == np.float16
    store = IndexStore.open(ix)
    got = store.embeddings(np.arange(1200))
    assert got.dtype == np.float32 and np.abs(got - x).max() <= 1e-3
    q = x[:20]
    assert store.faiss_index.search(q, 1)[1][:, 0].tolist() == list(range(20))  # exact search over the rounded vectors
    store.close()
    assert verify(ix).ok
    with pytest.raises(ConfigError, match="float16"):
        IndexWriter.open(ix, FakeEncoder(32), shard_dtype="float32")


def test_float16_auto_is_measured_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "AUTO_STORAGES", ("float16",))  # float16 or float32 (the codes: their own tests)
    x = clustered(800, dim=32, seed=6)
    _write(tmp_path / "auto", x, shard_dtype="auto")
    storage = json.loads((tmp_path / "auto" / "manifest.json").read_text())["storage"]
    assert storage["requested"] == "auto" and storage["queries"] == 200 and storage["items"] == 500
    assert storage["dtype"] == ("float16" if storage["recall_at_10"] >= compression.FLOAT16_RECALL else "float32")
    # near-duplicates closer than float16 resolves: rounding reorders them, auto keeps float32
    rng = np.random.default_rng(0)
    base = clustered(20, dim=32, seed=7)
    dup = np.repeat(base, 25, axis=0) + 2e-4 * rng.standard_normal((500, 32)).astype(np.float32)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    measured = compression.float16_costs_nothing(dup)
    assert measured["recall_at_10"] < compression.FLOAT16_RECALL and not measured["float16"]


def test_streamed_exact_equals_brute_force(tmp_path):
    x = clustered(1100, dim=16, seed=8)
    _write(tmp_path / "s", x)
    store = IndexStore.open(tmp_path / "s")
    rows = recall.query_rows(1100, 50)
    queries, exact = remeasure.streamed_exact(store, rows, block=128)
    store.close()
    assert np.array_equal(queries, x[rows])
    assert np.array_equal(exact, recall.exact_neighbours(x, rows))


def test_an_index_written_before_compact_vectors_opens_and_searches(tmp_path):
    ix = tmp_path / "old"
    shutil.copytree(BEFORE, ix)
    m = json.loads((ix / "manifest.json").read_text())
    assert "storage" not in m and "memory_budget" not in m and m["trained"]
    store = IndexStore.open(ix)
    x = store.embeddings(np.arange(len(store)))
    assert store.faiss_index.ntotal == 600 and store.index_spec == m["index_spec"]
    assert _recall(store, x, x[:50]) >= 0.9
    store.close()
    assert verify(ix).ok
    # and it grows with today's writer: float32 shards, the same spec's codes
    _write(ix, clustered(200, dim=16, seed=11), lo=600)
    store = IndexStore.open(ix)
    assert store.faiss_index.ntotal == 800
    with h5py.File(ix / store.manifest["shards"][-1]["file"], "r") as f:
        assert f["embeddings"].dtype == np.float32
    store.close()


def test_memory_budget_on_the_command_line(tmp_path, small_auto, capsys):
    from medcbir.cli.main import main

    x = clustered(2500, dim=64, seed=12)
    _write(tmp_path / "ix", x[:2100])  # no budget: the full-dimension ladder
    assert not json.loads((tmp_path / "ix" / "manifest.json").read_text())["index_spec"].startswith("PCAU")
    assert main(["retrain", str(tmp_path / "ix"), "--memory-budget", "lots"]) == 2
    assert "--memory-budget" in capsys.readouterr().err
    assert main(["retrain", str(tmp_path / "ix"), "--memory-budget", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert out["retrained"] and out["spec"] == m["index_spec"] and m["index_spec"].startswith("PCAU")
    assert m["memory_budget"] == 100 and m["recall"]["chain"]["bytes_per_item"] <= 100 and m["recall"]["memory_budget"] == 100
    assert main(["index", str(tmp_path), "--out", str(tmp_path / "new"), "--memory-budget", "-3"]) == 2


def test_lists_sized_once_hold_what_add_sa_codes_adds():
    x = clustered(3000, dim=32, seed=13)
    for spec in ("IVF16,PQ8", "IVF16,SQ8"):
        trained = faiss_index.train(spec, 32, x[:2000])
        runs = [(trained.sa_encode(x[a:b]), a) for a, b in ((0, 700), (700, 1900), (1900, 3000))]
        one, other, twice = faiss.clone_index(trained), faiss.clone_index(trained), faiss.clone_index(trained)
        for codes, first in runs:
            one.add_sa_codes(codes, np.arange(first, first + len(codes), dtype=np.int64))
        faiss_index.fill_ivf(faiss.downcast_index(other), runs)
        faiss_index.fill_ivf(faiss.downcast_index(twice), runs[:1])  # lists already holding entries grow
        faiss_index.fill_ivf(faiss.downcast_index(twice), runs[1:])
        assert one.ntotal == other.ntotal == twice.ntotal == 3000
        a = faiss.extract_index_ivf(one).invlists
        for b in (faiss.extract_index_ivf(other).invlists, faiss.extract_index_ivf(twice).invlists):
            for lst in range(16):
                size = a.list_size(lst)
                assert b.list_size(lst) == size
                assert np.array_equal(faiss.rev_swig_ptr(a.get_ids(lst), size), faiss.rev_swig_ptr(b.get_ids(lst), size))
                width = size * faiss.extract_index_ivf(one).code_size
                assert np.array_equal(faiss.rev_swig_ptr(a.get_codes(lst), width), faiss.rev_swig_ptr(b.get_codes(lst), width))


@pytest.mark.parametrize("dtype, bits", [("sq8", 8), ("sq6", 6)])
def test_scalar_quantised_shards_decode_on_read_for_every_reader(tmp_path, small_auto, dtype, bits):
    from medcbir.indexer import compact
    from medcbir.indexer.retrain import retrain
    from medcbir.indexer.shard import read_embeddings

    x = clustered(2600, dim=32, seed=12)
    ix = tmp_path / dtype
    _write(ix, x, shard_dtype=dtype)
    m = json.loads((ix / "manifest.json").read_text())
    assert m["storage"] == {"requested": dtype, "dtype": dtype} and m["trained"]
    first = ix / m["shards"][0]["file"]
    with h5py.File(first, "r") as f:
        # bytes on disk: the codes (D × bits / 8 per row), not float32
        assert f["embeddings"].dtype == np.uint8 and f["embeddings"].shape == (500, 32 * bits // 8)
        assert f["embeddings"].id.get_storage_size() == 500 * 32 * bits // 8
        lo, span = f["embeddings_range"][...]
    assert np.allclose(lo, x[:500].min(0)) and np.allclose(lo + span, x[:500].max(0), atol=1e-6)
    step = span / (2 ** bits - 1)
    decoded = read_embeddings(first)
    assert decoded.dtype == np.float32 and (np.abs(decoded - x[:500]) <= step / 2 + 1e-6).all()
    store = IndexStore.open(ix)
    got = store.embeddings(np.arange(2600))
    assert np.array_equal(got[:500], decoded)
    out = np.empty((700, 32), np.float32)
    store.fill_rows(out, 400, 1100)  # across a shard boundary
    assert np.array_equal(out, got[400:1100])
    assert _recall(store, got, got[:50]) >= 0.9
    store.close()
    assert verify(ix).ok
    # a flipped code is caught by verify (the recorded sha256 is of the decoded values)
    damaged = tmp_path / "damaged"
    shutil.copytree(ix, damaged)
    with h5py.File(damaged / m["shards"][1]["file"], "r+") as f:
        f["embeddings"][3, 0] = (int(f["embeddings"][3, 0]) + 1) % 256
    from medcbir.indexer.checksum import fast_checksum
    from medcbir.indexer.fsutil import sha256_file

    mm = json.loads((damaged / "manifest.json").read_text())  # the file's own checksums re-recorded:
    mm["shards"][1].update(sha256=sha256_file(damaged / mm["shards"][1]["file"]), xxh3=fast_checksum(damaged / mm["shards"][1]["file"]))
    (damaged / "manifest.json").write_text(json.dumps(mm))  # only the embeddings' sha256 can tell
    report = verify(damaged)
    assert not report.ok and any("embeddings do not match" in p for p in report.problems), report.problems
    # retraining and compaction read the decoded vectors and keep the storage
    assert retrain(ix)["generation"] > m["generation"]
    with IndexWriter.open(ix, FakeEncoder(32)) as w:
        w.delete_sources([f"/synthetic/{i}.dcm" for i in range(0, 400)])
    compact(ix)
    m2 = json.loads((ix / "manifest.json").read_text())
    with h5py.File(ix / m2["shards"][0]["file"], "r") as f:
        assert f.attrs["embeddings_codec"] == dtype
    store = IndexStore.open(ix)
    assert len(store) == 2200 and np.abs(store.embeddings(np.arange(2200)) - got[400:]).max() <= 2 * step.max()
    store.close()
    assert verify(ix).ok


def test_auto_storage_picks_sq8_only_when_it_costs_no_recall(tmp_path, monkeypatch):
    # the scalar codes alone (the transform codes come first and are tested in test_transform_codec.py)
    monkeypatch.setattr(compression, "AUTO_STORAGES", ("sq8", "float16"))
    # clusters of 11 well apart: each item's exact top-10 is its cluster, 8-bit codes keep it
    rng = np.random.default_rng(13)
    x = np.repeat(rng.standard_normal((80, 32)), 11, axis=0)[:800] + 0.05 * rng.standard_normal((800, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    chosen = compression.choose_storage(x[:500])
    assert chosen["tried"]["sq8"] >= compression.FLOAT16_RECALL and chosen["dtype"] == "sq8"
    _write(tmp_path / "auto", x, shard_dtype="auto")
    storage = json.loads((tmp_path / "auto" / "manifest.json").read_text())["storage"]
    assert storage["dtype"] == "sq8" and storage["requested"] == "auto" and storage["items"] == 500
    # near-duplicates 8 bits cannot tell apart but float16 can: auto falls back to float16
    rng = np.random.default_rng(1)
    base = clustered(50, dim=32, seed=14)
    dup = np.repeat(base, 10, axis=0) + 3e-3 * rng.standard_normal((500, 32)).astype(np.float32)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    chosen = compression.choose_storage(dup)
    assert chosen["tried"]["sq8"] < compression.FLOAT16_RECALL and chosen["dtype"] == "float16", chosen
