"""Sharded search on Ray actors against the single-process engine, on the same real indexes.

Exact indexes must give the same ids and scores; IVF indexes (with and without a refine step)
the same ids under the same search parameters; filters, tombstones and ``exclude`` included.
One local Ray runtime (loopback, 2 CPUs) serves the module and leaves no process behind.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.engine.indexes import copy_index, rebuild_with_spec
from tests.ray_procs import ray_runtime  # noqa: F401 - fixture

pytestmark = pytest.mark.ray


def compare(single, sharded, exact: bool, **options) -> int:
    """Assert equal answers for UID queries of every patient; returns the neighbours compared."""
    uids = [str(u) for u in np.asarray(single.columns["sop_instance_uid"])[::7]]
    live = [u for u in uids if single.live[single.lookup.find([u])[0]]]
    a = single.search(live, k=8, **options)
    b = sharded.search(live, k=8, **options)
    compared = 0
    for hits_a, hits_b in zip(a, b):
        assert [n.id for n in hits_a] == [n.id for n in hits_b]
        if exact:
            assert np.allclose([n.score for n in hits_a], [n.score for n in hits_b], rtol=0, atol=1e-6)
        assert [n.meta["sop_instance_uid"] for n in hits_a] == [n.meta["sop_instance_uid"] for n in hits_b]
        compared += len(hits_a)
    return compared


@pytest.fixture(scope="module")
def variants(flat_index, tmp_path_factory):
    """The flat test index under IVF specs, and a copy with a tombstoned series."""
    from medcbir.indexer import IndexStore, delete

    folder = tmp_path_factory.mktemp("sharded")
    ivf_refine = rebuild_with_spec(flat_index, folder / "ivf-refine", "IVF4,PQ64x4,Refine(Flat)")  # 64 sub-quantisers: no tied approximate scores at 80 items
    ivf_flat = rebuild_with_spec(flat_index, folder / "ivf-flat", "IVF4,Flat")
    deleted = copy_index(flat_index, folder / "deleted")
    store = IndexStore.open(flat_index)
    series = str(store.columns["series_instance_uid"][5])
    store.close()
    assert delete(deleted, series=[series]) > 0
    return {"ivf-refine": ivf_refine, "ivf-flat": ivf_flat, "deleted": deleted}


@pytest.mark.parametrize("shards", [2, 3])
def test_exact_sharded_equals_single_process(ray_runtime, flat_index, shards):
    from medcbir.engine import Engine, open_engine

    single = Engine.open(flat_index)
    sharded = open_engine(flat_index, ray=ray_runtime, shards=shards)
    try:
        assert sharded.shards == shards and len(sharded) == len(single)
        modality = str(single.columns["modality"][0])
        series = [str(s) for s in np.unique(single.columns["series_instance_uid"])[:2]]
        assert compare(single, sharded, exact=True) > 0
        assert compare(single, sharded, exact=True, exclude="same-patient") > 0
        assert compare(single, sharded, exact=True, exclude="same-study", modality=modality) > 0
        assert compare(single, sharded, exact=True, series=series) > 0
        vectors = single.embeddings(np.arange(0, len(single), 9))  # embedding queries, one batch
        for a, b in zip(single.search(vectors, k=5), sharded.search(vectors, k=5)):
            assert [n.id for n in a] == [n.id for n in b]
            assert np.allclose([n.score for n in a], [n.score for n in b], atol=1e-6)
    finally:
        sharded.close()
        single.close()


@pytest.mark.parametrize("name", ["ivf-refine", "ivf-flat"])
def test_ivf_sharded_gives_the_same_ids(ray_runtime, variants, name):
    from medcbir.engine import Engine, open_engine

    single = Engine.open(variants[name])
    sharded = open_engine(variants[name], ray=ray_runtime, shards=3)
    try:
        assert not single.exact and not sharded.exact
        for knobs in ({"nprobe": 1}, {"nprobe": 2, "k_factor": 2}):
            single.set_search_params(**knobs)
            sharded.set_search_params(**knobs)
            assert compare(single, sharded, exact=False) > 0
            assert compare(single, sharded, exact=False, exclude="same-patient") > 0
    finally:
        sharded.close()
        single.close()


def test_tombstones_are_never_returned(ray_runtime, variants):
    from medcbir.engine import Engine, open_engine

    single = Engine.open(variants["deleted"])
    sharded = open_engine(variants["deleted"], ray=ray_runtime, shards=2)
    try:
        assert len(sharded) == len(single) < len(single.ids)
        assert compare(single, sharded, exact=True, exclude="same-patient") > 0
        vectors = single.embeddings(np.arange(len(single.ids)))
        dead = set(np.nonzero(~single.live)[0].tolist())
        assert dead and not dead & {n.id for hits in sharded.search(vectors, k=10) for n in hits}
    finally:
        sharded.close()
        single.close()


def test_cli_search_with_ray_matches(ray_runtime, flat_index):
    from click.testing import CliRunner

    from medcbir.cli.main import cli
    from medcbir.engine import Engine

    with Engine.open(flat_index) as engine:
        queries = [str(u) for u in np.asarray(engine.columns["sop_instance_uid"])[::20]]
    runner = CliRunner()
    plain = runner.invoke(cli, ["search", str(flat_index), *queries, "-k", "5", "--json", "--exclude", "same-patient"])
    ray = runner.invoke(cli, ["search", str(flat_index), *queries, "-k", "5", "--json", "--exclude", "same-patient", "--ray", ray_runtime, "--shards", "2"])
    assert plain.exit_code == 0 and ray.exit_code == 0, (plain.output, ray.output)
    assert json.loads(plain.output) == json.loads(ray.output)
    bad = runner.invoke(cli, ["search", str(flat_index), queries[0], "--shards", "2"])
    assert bad.exit_code != 0 and "--shards needs --ray" in str(bad.exception)  # `entry` prints it as one line


def test_unsupported_spec_is_a_clear_error(ray_runtime, flat_index, tmp_path):
    from medcbir.engine import open_engine
    from medcbir.errors import ConfigError

    hnsw = rebuild_with_spec(flat_index, tmp_path / "hnsw", "HNSW8")
    with pytest.raises(ConfigError, match="sharded search supports exact and IVF"):
        open_engine(hnsw, ray=ray_runtime, shards=2)


def test_region_search_sharded_equals_single_process(ray_runtime, lesions):
    """The same regions, scores and boxes from 3 actors as from one process (one metric from
    all parts' moments), filters and the per-series cap included."""
    import csv

    from medcbir.engine import Engine, open_engine

    rows = [r for r in csv.DictReader(open(lesions["archive"] / "lesion-boxes.csv")) if min(int(r["w"]), int(r["h"])) >= 8][:6]
    single = Engine.open(lesions["index"])
    sharded = open_engine(lesions["index"], ray=ray_runtime, shards=3)
    try:
        sources = {m["sop_instance_uid"]: m["source"] for m in single.meta(single.ids)}
        for r in rows:
            box = [int(r[c]) for c in "xywh"]
            for options in ({"exclude": "same-patient"}, {"per_series": 1}):
                a = single.search(sources[r["sop_instance_uid"]], 5, roi=box, **options)[0]
                b = sharded.search(sources[r["sop_instance_uid"]], 5, roi=box, **options)[0]
                assert [(n.id, n.region) for n in a] == [(n.id, n.region) for n in b]
                assert np.allclose([n.score for n in a], [n.score for n in b], atol=1e-5)
    finally:
        sharded.close()
        single.close()


def test_one_index_with_a_projected_chain_sharded(ray_runtime, tmp_path):
    """A PCAU chain spread over actors: each part re-ranks its own candidates in its compact
    store, the driver merges by those scores — at least one index's recall."""
    import faiss

    from medcbir.engine import Engine, open_engine
    from medcbir.indexer import IndexWriter
    from tests.indexer.conftest import FakeEncoder, Meta, clustered

    x = clustered(900, dim=32, seed=31)
    with IndexWriter.open(tmp_path / "pcau", FakeEncoder(32), index_spec="PCAU12,IVF4,SQ8,Refine(SQfp16)", shard_size=150) as w:
        w.add_embeddings([Meta(i) for i in range(900)], x)
    q = np.ascontiguousarray(x[::9])
    _, exact = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    single = Engine.open(tmp_path / "pcau")
    sharded = open_engine(tmp_path / "pcau", ray=ray_runtime, shards=3)
    try:
        assert sharded.shards == 3
        groups = {None: list(range(len(q)))}
        _, one = single.search_groups(q, 10, None, groups)
        _, many = sharded.search_groups(q, 10, None, groups)
    finally:
        sharded.close()
        single.close()

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])

    assert recall(many) >= recall(one) - 0.01 and recall(many) >= 0.8


@pytest.mark.parametrize("dtype", ["float16", "tc6"])
def test_one_index_reranked_from_its_shards_sharded(ray_runtime, tmp_path, dtype):
    """A ``Refine(Shards)`` chain spread over actors: each part re-ranks its own candidates with
    the embeddings of its own shards (exact scores; transform-coded shards scored through the
    index's codebook, which each actor loads), the driver merges by them — each query's scores at
    least one index's, rank by rank, and tombstones never returned."""
    import faiss

    from medcbir.engine import Engine, open_engine
    from medcbir.indexer import IndexWriter
    from tests.indexer.conftest import FakeEncoder, Meta, clustered

    x = clustered(900, dim=32, seed=32)
    ix = tmp_path / "shards-rerank"
    with IndexWriter.open(ix, FakeEncoder(32), index_spec="PCAU12,IVF4,SQ8,Refine(Shards)", shard_size=150, shard_dtype=dtype) as w:
        w.add_embeddings([Meta(i) for i in range(900)], x)
    with IndexWriter.open(ix, FakeEncoder(32)) as w:
        w.delete_sources([f"/synthetic/{i}.dcm" for i in range(0, 900, 5)])
    q = np.ascontiguousarray(x[1::9])
    single = Engine.open(ix)
    sharded = open_engine(ix, ray=ray_runtime, shards=3)
    try:
        assert sharded.shards == 3
        stored = single.embeddings(np.arange(900))
        groups = {None: list(range(len(q)))}
        s_one, one = single.search_groups(q, 10, single.live, groups)
        s_many, many = sharded.search_groups(q, 10, sharded.live, groups)
    finally:
        sharded.close()
        single.close()
    live = np.setdiff1d(np.arange(900), np.arange(0, 900, 5))
    _, exact = faiss.knn(q, stored[live], 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact = live[exact]
    assert not set(many.ravel().tolist()) & set(range(0, 900, 5))
    # exact scores of the stored vectors: the parts' candidates include one index's, so rank by rank at least as good
    assert np.allclose(s_many, np.einsum("bkd,bd->bk", stored[many], q), atol=1e-5)
    assert (s_many >= s_one - 1e-6).all()

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])

    assert recall(many) >= recall(one) and recall(many) >= 0.9
