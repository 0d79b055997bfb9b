"""Sharded search over N separate indexes (one Ray actor each) against one index over the same
vectors: the same top-10 when every part is exact; HNSW parts allowed, recall measured."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from medcbir.errors import ConfigError, IndexNotFound
from medcbir.indexer import IndexStore, IndexWriter
from tests.indexer.conftest import FakeEncoder, Meta, clustered
from tests.ray_procs import ray_runtime  # noqa: F401 - fixture

pytestmark = pytest.mark.ray

PARTS = 4


def _index(path, x, lo, spec="Flat", encoder=None):
    with IndexWriter.open(path, encoder or FakeEncoder(x.shape[1]), index_spec=spec, shard_size=150) as w:
        w.add_embeddings([Meta(lo + i) for i in range(len(x))], x)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    x = clustered(1200, dim=32, seed=21)
    bounds = [0, 250, 600, 900, 1200]  # unequal parts
    parts = [_index(folder / f"flat-{p}", x[a:b], a) for p, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    hnsw = [_index(folder / f"hnsw-{p}", x[a:b], a, spec="HNSW16,Flat") for p, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    whole = _index(folder / "whole", x, 0)
    return x, parts, hnsw, whole


def test_exact_parts_give_the_top10_of_one_index(ray_runtime, data):
    from medcbir.engine.sharded import ShardedIndexes

    x, parts, _, whole = data
    q = np.ascontiguousarray(x[::13] + 0.01 * np.random.default_rng(0).standard_normal((len(x[::13]), 32)).astype(np.float32))
    store = IndexStore.open(whole)
    one_scores, one_ids = store.faiss_index.search(q, 10)
    store.close()
    with ShardedIndexes.open(parts, ray=ray_runtime) as sharded:
        assert len(sharded) == 1200 and sharded.exact and sharded.offsets.tolist() == [0, 250, 600, 900]
        scores, part, ids = sharded.search(q, 10)
        got = sharded.global_ids(part, ids)
        assert np.array_equal(got, one_ids)  # every query: the same top-10, in order
        assert np.allclose(scores, one_scores, atol=1e-6)
        # (part, id) names the item: its metadata is the one the single index has at that id
        assert sharded.meta(int(part[0, 0]), [int(ids[0, 0])])[0]["sop_instance_uid"] == f"1.2.3.{one_ids[0, 0]}"


def test_hnsw_parts_are_allowed_and_their_recall_measured(ray_runtime, data):
    from medcbir.engine.sharded import ShardedIndexes

    x, _, hnsw, _ = data
    q = np.ascontiguousarray(x[::7])
    _, exact = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    with ShardedIndexes.open(hnsw, ray=ray_runtime) as sharded:
        assert not sharded.exact and {p["spec"] for p in sharded.parts} == {"HNSW16,Flat"}
        _, part, ids = sharded.search(q, 10)
        got = sharded.global_ids(part, ids)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= 0.95


def test_parts_of_different_encoders_or_missing_are_refused(ray_runtime, data, tmp_path):
    from medcbir.engine.sharded import ShardedIndexes

    x, parts, _, _ = data
    other = _index(tmp_path / "other", x[:100], 0, encoder=FakeEncoder(32, fingerprint="e" * 64))
    with pytest.raises(ConfigError, match="different encoders"):
        ShardedIndexes.open([parts[0], other], ray=ray_runtime)
    with pytest.raises(IndexNotFound):
        ShardedIndexes.open([parts[0], tmp_path / "nowhere"], ray=ray_runtime)
    with pytest.raises(ConfigError):
        ShardedIndexes.open([], ray=ray_runtime)
