"""Recall measured on the index's own embeddings, and ``auto`` meeting a target where PQ fails."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from medcbir.indexer import IndexStore, IndexWriter, faiss_index, recall

from .conftest import FakeEncoder, Meta, clustered


def fitted_gaussian(n: int, seed: int, dim: int = 64) -> np.ndarray:
    """Vectors drawn from a Gaussian fitted (mean + covariance) to narrow-cone embeddings.

    The cone mimics the default encoder's embeddings of a phantom archive (pairwise
    cosine 0.98–1.0, a few components carry most of the variance, no cluster structure): a unit
    mean plus a small spread with a decaying spectrum. A Gaussian is fitted to 4,000 of them and
    drawn from, as the benchmark does with real embeddings.
    """
    g = np.random.default_rng(123)
    mean = g.normal(size=dim)
    mean /= np.linalg.norm(mean)
    basis = np.linalg.qr(g.normal(size=(dim, dim)))[0]
    cone = mean + (g.standard_normal((4000, dim)) * 0.03 * np.arange(1, dim + 1) ** -0.7) @ basis.T
    cone /= np.linalg.norm(cone, axis=1, keepdims=True)
    mu, cov = cone.mean(0), np.cov(cone.T)
    x = np.random.default_rng(seed).multivariate_normal(mu, cov, size=n)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def build(path, x, spec="auto", target=None):
    with IndexWriter.open(path, FakeEncoder(x.shape[1]), index_spec=spec, shard_size=1000, target_recall=target) as w:
        for start in range(0, len(x), 500):
            w.add_embeddings([Meta(i) for i in range(start, min(start + 500, len(x)))], x[start : start + 500])
    return IndexStore.open(path)


def test_recall_measurement_equals_independent_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((800, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.index_factory(16, "IVF8,PQ4", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    rows = recall.query_rows(len(x), 50, seed=1)
    exact = recall.exact_neighbours(x, rows)
    got = recall.measure(index, x[rows], rows, exact, {"nprobe": 2})

    # independent: numpy scores, argsort, drop the query itself, set intersection
    truth = [[j for j in np.argsort(-(x @ x[r]), kind="stable") if j != r][:10] for r in rows]
    assert [list(t) for t in exact] == truth
    index.nprobe = 2
    _, ann = index.search(x[rows], 11)
    ann = [[j for j in row if j != r and j >= 0][:10] for row, r in zip(ann, rows)]
    expected = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ann, truth)])
    assert got.recall_at_10 == pytest.approx(expected)
    assert 0.0 < got.recall_at_10 < 1.0  # a real approximation, not a trivial 0 or 1


def test_auto_on_a_fitted_gaussian_where_pq_fails_meets_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 16)
    x = fitted_gaussian(3000, seed=1)
    store = build(tmp_path / "ix", x)
    measured = store.manifest["recall"]
    pq = [m for m in measured["tried"] if ",PQ" in m["spec"]]
    assert pq and max(m["recall_at_10"] for m in pq) < 0.95  # IVF-PQ cannot reach it on this data
    assert ",PQ" not in store.index_spec and store.index_spec == measured["spec"]
    assert measured["recall_at_10"] >= 0.95 and measured["target"] == 0.95
    assert store.search_params == measured["params"]
    # held-out queries (not items, not the tuning sample) through the stored index and params
    q = fitted_gaussian(200, seed=2)
    _, ids = store.faiss_index.search(q, 10)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert recall.recall_at_k(ids, truth) >= 0.95


def test_verify_json_reports_recall_and_parameters(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from medcbir.cli.main import cli

    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 16)
    build(tmp_path / "ix", fitted_gaussian(2500, seed=3), spec="IVF16,PQ4")
    out = CliRunner().invoke(cli, ["verify", str(tmp_path / "ix"), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert report["recall_at_10"] == manifest["recall"]["recall_at_10"] and 0 <= report["recall_at_10"] < 0.95
    assert report["target_recall"] == 0.95 and report["search_params"] == {"nprobe": manifest["recall"]["params"]["nprobe"]}


def test_search_on_an_index_below_target_warns_once(tmp_path, monkeypatch, caplog):
    from medcbir.engine import Engine

    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    x = fitted_gaussian(2500, seed=4)
    build(tmp_path / "low", x, spec="IVF16,PQ4", target=0.99)  # 4-byte codes: far below 0.99
    build(tmp_path / "exact", x[:1500], spec="Flat")
    caplog.set_level(logging.WARNING, logger="medcbir.engine")
    engine = Engine.open(tmp_path / "low", encoder=FakeEncoder(64))
    assert engine.recall["recall_at_10"] < 0.99
    engine.search(x[:3], k=5)
    engine.search(x[3:6], k=5)
    warnings = [r for r in caplog.records if "below its target 0.99" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    Engine.open(tmp_path / "exact", encoder=FakeEncoder(64)).search(x[:3], k=5)
    assert not [r for r in caplog.records if "below its target" in r.getMessage()]


def test_ivf_candidates_share_one_coarse_quantiser_and_train_codes_on_a_sample():
    x = clustered(12_000, dim=32, seed=5)
    direct = faiss_index.train("IVF32,PQ4,Refine(Flat)", 32, x)
    shared = recall.SharedTraining(x, code_train=10_000)
    pq, _ = shared.train("IVF32,PQ4,Refine(Flat)", 32)
    sq, _ = shared.train("IVF32,SQ8,Refine(Flat)", 32)

    def centroids(index):
        return faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).reconstruct_n(0, 32)

    # the same k-means as each candidate's own training, run once for both candidates
    np.testing.assert_array_equal(centroids(pq), centroids(direct))
    np.testing.assert_array_equal(centroids(sq), centroids(direct))
    assert list(shared.coarse_seconds) == [32] and len(shared.code_sample) == 10_000
    assert pq.is_trained and sq.is_trained
    # codes trained on the 10k sample search as well as codes trained on all 12k
    rows = recall.query_rows(len(x), 100)
    exact = recall.exact_neighbours(x, rows)
    got = {}
    for name, index in (("shared", pq), ("direct", direct)):
        index.add(x)
        got[name] = recall.measure(index, x[rows], rows, exact, {"nprobe": 4, "k_factor": 4}).recall_at_10
    assert got["shared"] >= got["direct"] - 0.02, got


def test_choose_stops_at_the_first_grid_point_and_spec_reaching_the_target():
    x = fitted_gaussian(4000, seed=6)
    specs = ["IVF16,PQ4,Refine(Flat)", "IVF16,SQ8,Refine(Flat)", "HNSW32,Flat", "Flat"]
    choice, trained = recall.choose(x, 0.95, specs=specs)
    by_spec: dict = {}
    for m in choice.tried:
        by_spec.setdefault(m.spec, []).append(m)
    tried_specs = list(by_spec)
    assert tried_specs == specs[: len(tried_specs)] and choice.spec == tried_specs[-1]
    # every spec before the winner was measured over its whole grid and stayed below the target
    for spec in tried_specs[:-1]:
        assert len(by_spec[spec]) == len(recall.grid_for(spec)) and max(m.recall_at_10 for m in by_spec[spec]) < 0.95
    # the winner's grid stopped at its first point reaching the target
    won = by_spec[choice.spec]
    assert won[-1].recall_at_10 >= 0.95 and all(m.recall_at_10 < 0.95 for m in won[:-1])
    assert won[-1].params == choice.params and choice.recall_at_10 == won[-1].recall_at_10
    assert 0 < choice.train_seconds <= choice.seconds and choice.record()["tuning_seconds"] >= 0


def test_remeasure_queries_weight_the_newest_items():
    rows = recall.query_rows(10_000, 200, seed=3, recent_from=9_000)
    assert len(rows) == 200 and len(set(rows.tolist())) == 200 and rows.max() < 10_000
    recent = int((rows >= 9_000).sum())
    assert recent >= 100  # half drawn among the recent 10 %, plus the uniform half's share
    assert recent < 200  # the old items are still measured
    np.testing.assert_array_equal(rows, recall.query_rows(10_000, 200, seed=3, recent_from=9_000))
    uniform = recall.query_rows(10_000, 200, seed=3)
    assert int((uniform >= 9_000).sum()) < 50
    # nothing recent, or fewer items than queries: the plain uniform draw
    np.testing.assert_array_equal(recall.query_rows(10_000, 200, seed=3, recent_from=10_000), uniform)
    np.testing.assert_array_equal(recall.query_rows(150, 200, seed=3, recent_from=100), np.arange(150))


def test_the_newest_items_are_the_last_percent_but_at_least_ten_times_the_queries():
    from medcbir.indexer.remeasure import newest_from

    assert newest_from(1_000_000) == 990_000
    assert newest_from(100_000) == 100_000 - 10 * recall.QUERIES
    assert newest_from(1_500) is None  # the newest 2,000 would be the whole index


def test_the_target_must_hold_for_the_newest_queries_too():
    # two groups of queries: the old ones all found, the newest half found 9 times in 10
    exact = np.arange(400 * 10).reshape(400, 10)
    found = exact.copy()
    found[200:, 9] = -1  # the newest queries miss one neighbour each
    per = recall.recall_per_query(found, exact)
    assert per[:200].mean() == 1.0 and per[200:].mean() == pytest.approx(0.9)
    newest = np.arange(400) >= 200

    class Fixed:  # an "index" answering with `found`
        def search(self, queries, k, params=None):
            return None, found[:, :k]

    m_all = recall.measure(Fixed(), np.zeros((400, 4), np.float32), None, exact, {}, "x")
    m_new = recall.measure(Fixed(), np.zeros((400, 4), np.float32), None, exact, {}, "x", newest)
    assert m_all.recall_at_10 == m_new.recall_at_10 == pytest.approx(0.95)
    assert m_all.reaches(0.93) and not m_new.reaches(0.93)  # the newest half alone is at 0.9
    assert m_new.low == pytest.approx(0.9)  # no spread inside the group: its bound is its mean
