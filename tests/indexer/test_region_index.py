"""The stored region search structure (medcbir/indexer/region_index.py): computed when shards are
committed, reused by every open, grown commit by commit, kept right through delete, compaction,
repair and kill -9, and computed at open for an index that does not store it.

Real HDF5 shards, manifests and FAISS; synthetic region descriptors (what is under test is where
the metric and the IVF come from, not how a region is described)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from medcbir.encoders.region_descriptor import INTENSITY, KNEE, UNIT, comparable
from medcbir.encoders.regions import DIM, RegionSet
from medcbir.engine.region_search import RegionIndex
from medcbir.errors import IndexCorrupt
from medcbir.imaging import ItemMeta
from medcbir.indexer import IndexStore, IndexWriter, compact, delete, region_index, repair, retrain, verify

ROOT = Path(__file__).resolve().parents[2]
PER = 16  # regions per item


def items(lo: int, hi: int):
    """Items lo..hi-1, each the same whatever batch it comes in (seeded by its number)."""
    metas, vectors, regions = [], [], []
    for i in range(lo, hi):
        rng = np.random.default_rng(1000 + i)
        metas.append(ItemMeta(sop_instance_uid=f"2.25.{i + 1}", frame=0, series_instance_uid=f"2.25.9{i // 10}",
                              study_instance_uid=f"2.25.8{i // 10}", modality="CT", patient_pseudonym=f"{i // 10:032x}",
                              source=f"synthetic/{i}.dcm"))
        v = rng.standard_normal(256).astype(np.float32)
        vectors.append(v / np.linalg.norm(v))
        scale = np.linspace(1.0, 6.0, DIM) * (1.0 + (i % 3))
        regions.append(RegionSet(rng.integers(0, 60, (PER, 4)).astype(np.int32),
                                 (rng.standard_normal((PER, DIM)) * scale + i % 5).astype(np.float32)))
    return metas, np.stack(vectors), regions


def write(index: Path, lo: int, hi: int, step: int, shard_size: int = 64, spec: str = "auto") -> None:
    """Add items lo..hi-1 in commits of ``step`` items (the plugin's incremental indexing)."""
    with IndexWriter.open(index, "thumbnail:16", regions=True, shard_size=shard_size, index_spec=spec) as writer:
        for start in range(lo, hi, step):
            writer.add_embeddings(*items(start, min(start + step, hi)))
            writer.commit()


def answers(index: Path, queries=(0, 7, 40, 111, 250), k: int = 8):
    """(item ids, scores, boxes) of region queries by stored descriptors (uids, for comparing indexes)."""
    with IndexStore.open(index) as store:
        regions = RegionIndex.open(store)
        uids = np.asarray(store.columns["sop_instance_uid"]).astype(str)
        live = store.live_mask.copy()
        out = []
        for q in queries:
            if q >= len(regions):
                continue
            hits = regions.search(regions.vectors_of([q])[0], k, live)
            out.append(([uids[i] for i, _, _ in hits], np.array([s for _, s, _ in hits]), [b for _, _, b in hits]))
        return out, regions.stored


def assert_same(a, b):
    assert len(a) == len(b) > 0
    for (ids_a, s_a, box_a), (ids_b, s_b, box_b) in zip(a, b):
        assert ids_a == ids_b and box_a == box_b
        np.testing.assert_allclose(s_a, s_b, rtol=1e-5)


@pytest.fixture(autouse=True)
def fresh_counters():
    region_index.COUNTERS.update(moments=0, trained=0)


def test_a_second_open_recomputes_nothing_and_growth_equals_a_fresh_build(tmp_path):
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    write(grown, 0, 300, step=7)  # 43 commits of 7 items, as the plugin adds them
    write(fresh, 0, 300, step=300)
    manifest = json.loads((grown / "manifest.json").read_text())
    assert manifest["region_search"]["regions"] == 300 * PER and manifest["region_search"]["ivf"] is None
    assert all(s["region_part"]["count"] > 0 for s in manifest["shards"])
    region_index.COUNTERS.update(moments=0, trained=0)
    a, stored = answers(grown)
    assert stored and region_index.COUNTERS == {"moments": 0, "trained": 0}
    b, _ = answers(fresh)
    assert_same(a, b)
    # and the same as metric all the regions at once, the way it was done at the first query
    with IndexStore.open(fresh) as store:
        once = RegionIndex(store.regions())
        uids = np.asarray(store.columns["sop_instance_uid"]).astype(str)
        hits = once.search(once.vectors_of([40])[0], 8, store.live_mask.copy())
    assert [uids[i] for i, _, _ in hits] == a[2][0]
    np.testing.assert_allclose([s for _, s, _ in hits], a[2][1], rtol=1e-5)
    assert verify(grown).ok


def test_the_ivf_is_trained_on_growth_only_and_new_regions_join_its_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(region_index, "FLAT_MAX", 1500)
    index = tmp_path / "index"
    write(index, 0, 100, step=100)  # 1,024 then 1,600 regions: an IVF, trained once
    assert region_index.COUNTERS["trained"] == 1
    write(index, 100, 180, step=4)  # 20 small commits up to 2,880 regions (< 2 × 1,600): none trains
    assert region_index.COUNTERS["trained"] == 1
    manifest = json.loads((index / "manifest.json").read_text())
    ivf = manifest["region_search"]["ivf"]
    assert ivf["at_regions"] == 1600 and all(s["region_part"]["ivf"] == ivf["file"] for s in manifest["shards"])
    write(index, 180, 220, step=20)  # 3,520 regions > 2 × 1,600: trained again, once
    assert region_index.COUNTERS["trained"] == 2
    region_index.COUNTERS.update(moments=0, trained=0)
    with IndexStore.open(index) as store:
        regions = RegionIndex.open(store)
        assert regions.stored and type(regions.index).__name__ == "IndexIVFScalarQuantizer"
        assert region_index.COUNTERS == {"moments": 0, "trained": 0}
        live = store.live_mask.copy()
        # every region finds its own item first (the probe count was calibrated for recall)
        for row in (3, 1700, 3400):
            assert regions.search(regions.vectors_of([row])[0], 1, live)[0][0] == int(regions.item_ids[row])
    # new regions after the last training: their item is found through the stored lists
    write(index, 220, 230, step=5)
    with IndexStore.open(index) as store:
        regions = RegionIndex.open(store)
        row = int(np.flatnonzero(regions.item_ids == 225)[0])
        assert regions.stored and regions.search(regions.vectors_of([row])[0], 1, store.live_mask.copy())[0][0] == 225


@pytest.mark.parametrize("flat_max", [1 << 20, 1500])
def test_dropping_inadmissible_hits_answers_as_the_selector_does(tmp_path, monkeypatch, flat_max):
    """With most items admissible a region query searches every region and drops the hits of
    excluded items; with few, a selector keeps them out of the search. Both give the same answers,
    exact and through a stored IVF, with per-series caps and exclusions of several sizes."""
    import medcbir.engine.region_search as region_search

    monkeypatch.setattr(region_index, "FLAT_MAX", flat_max)
    index = tmp_path / "index"
    write(index, 0, 220, step=55)
    with IndexStore.open(index) as store:
        regions = RegionIndex.open(store)
        assert isinstance(regions.index, faiss.IndexIVF) == (flat_max < 1 << 20)
        n = int(store.live_mask.shape[0])
        codes = np.arange(n) // 10  # series of ten items
        rng = np.random.default_rng(3)
        cases = []
        for share in (0.97, 0.6):
            admissible = rng.random(n) < share
            for row in (5, 900, 2500):
                cases.append((regions.vectors_of([row])[0], admissible))
        answers_by = {}
        for path, threshold in (("postfilter", 0.0), ("selector", 1.01)):
            monkeypatch.setattr(region_search, "POSTFILTER_SHARE", threshold)
            answers_by[path] = [(regions.search(v, 12, adm), regions.search(v, 6, adm, codes, per_series=2)) for v, adm in cases]
    assert answers_by["postfilter"] == answers_by["selector"]
    for (plain, capped), (_, adm) in zip(answers_by["postfilter"], cases):
        assert len(plain) == 12 and all(adm[item] for item, _, _ in plain)
        assert np.bincount([codes[item] for item, _, _ in capped]).max() <= 2


def test_an_ivf_region_index_holds_codes_ids_and_boxes_only_and_keeps_its_recall(tmp_path, monkeypatch):
    """Above FLAT_MAX the regions are held as float16 scaled vectors (zero-padded to a multiple
    of PAD coordinates), a FAISS id, an int32 item id and int16 boxes: what search needs, without
    the descriptors or float32 copies; its top-10 agrees with exact search of the float32
    scaled descriptors as the float32 IVF's did."""
    import faiss

    monkeypatch.setattr(region_index, "FLAT_MAX", 1500)
    index = tmp_path / "index"
    write(index, 0, 200, step=100)  # 3,200 regions
    with IndexStore.open(index) as store:
        regions = RegionIndex.open(store)
        n = len(regions)
        padded = -(-DIM // region_index.PAD) * region_index.PAD
        assert isinstance(regions.index, faiss.IndexIVFScalarQuantizer) and regions.index.code_size == 2 * padded
        assert regions.item_ids.dtype == np.int32 and regions.boxes.dtype == np.int16
        assert regions.memory_bytes() == n * (2 * padded + 8 + 4 + 8) + regions.index.nlist * padded * 4
        assert not hasattr(regions, "descriptors") and not hasattr(regions, "vectors")
        exact = regions.metric(store.regions().descriptors)
        rows = np.random.default_rng(0).choice(n, 100, replace=False)
        np.testing.assert_allclose(regions.vectors_of(rows), exact[rows], rtol=2e-3, atol=2e-3)  # float16
        # the same items as a float32 IVF over the same lists, probing the same lists
        structure = region_index.load(store)
        reference = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, len(structure.ivf.centroids))
        reference.quantizer.add(structure.ivf.centroids.astype(np.float32))
        reference.is_trained = True
        region_index.fill(reference, exact, structure.ivf.lists)
        reference.nprobe = regions.index.nprobe  # search_preassigned scans nprobe of the lists given
        live = store.live_mask.copy()
        overlap = []
        for r in rows:
            q = exact[r][None]
            _, lists = reference.quantizer.search(q @ regions.coarse[0] + regions.coarse[1], int(regions.index.nprobe))
            d, got = np.empty((1, 40), np.float32), np.empty((1, 40), np.int64)
            reference.search_preassigned_c(1, faiss.swig_ptr(q), 40, faiss.swig_ptr(lists), faiss.swig_ptr(np.zeros(lists.shape, np.float32)),
                                           faiss.swig_ptr(d), faiss.swig_ptr(got), False)
            wanted = list(dict.fromkeys(int(regions.item_ids[t]) for t in got[0] if t >= 0))[:10]
            found = [i for i, _, _ in regions.search(exact[r], 10, live)]
            overlap.append(len(set(found) & set(wanted)) / len(wanted))
            assert found[0] == wanted[0]
        assert np.mean(overlap) >= 0.99


def test_an_index_without_the_stored_structure_answers_and_gets_it_at_its_next_commit(tmp_path):
    index = tmp_path / "index"
    write(index, 0, 200, step=50)
    before, _ = answers(index)
    # an index written before the structure was stored: no region_search, no region parts
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("region_search")
    manifest["shards"] = [{k: v for k, v in s.items() if k != "region_part"} for s in manifest["shards"]]
    path.write_text(json.dumps(manifest))
    region_index.COUNTERS.update(moments=0, trained=0)
    old, stored = answers(index)
    assert not stored and region_index.COUNTERS["moments"] == len(manifest["shards"])
    assert_same(old, before)
    write(index, 200, 201, step=1)  # the next commit stores it
    region_index.COUNTERS.update(moments=0, trained=0)
    after, stored = answers(index)
    assert stored and region_index.COUNTERS["moments"] == 0
    assert verify(index).ok


def test_a_structure_of_another_region_recipe_is_not_used_and_is_replaced(tmp_path):
    index = tmp_path / "index"
    write(index, 0, 120, step=60)
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["region_search"]["version"] = "radiomic-v0/proposals-v0"
    path.write_text(json.dumps(manifest))
    _, stored = answers(index)
    assert not stored
    write(index, 120, 121, step=1)
    manifest = json.loads(path.read_text())
    assert manifest["region_search"]["version"] == manifest["regions"]["version"]
    assert answers(index)[1]


def test_a_structure_of_another_metric_is_not_used_and_is_replaced(tmp_path):
    """An index whose stored structure was made for the whitened metric (before ``floored-v1``, no
    ``metric`` in its record) computes the current one at open and stores it at its next commit."""
    index = tmp_path / "index"
    write(index, 0, 120, step=60)
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["region_search"]["metric"] == region_index.METRIC
    del manifest["region_search"]["metric"]
    path.write_text(json.dumps(manifest))
    _, stored = answers(index)
    assert not stored
    write(index, 120, 121, step=1)
    assert json.loads(path.read_text())["region_search"]["metric"] == region_index.METRIC
    assert answers(index)[1]


def test_the_metric_whitens_large_directions_and_does_not_blow_up_small_ones():
    """On the compared scale (:func:`comparable`): principal directions with more than the mean
    variance are evened out (as whitening does); directions with less are scaled like a direction
    of mean variance, not blown up (whitening made the least varying direction the largest); two
    regions drawn at random are 2·D apart in squared distance; moments of parts give the metric of
    the whole."""
    rng = np.random.default_rng(0)
    spread = np.linspace(0.01, 5.0, DIM)
    y = rng.standard_normal((6000, DIM)) * spread + 3.0  # axis-aligned: the principal axes are the coordinates
    x = y.copy()  # descriptors whose compared form is y
    x[:, INTENSITY] = np.sinh(y[:, INTENSITY]) * (KNEE / UNIT)
    np.testing.assert_allclose(comparable(x), y, rtol=1e-4, atol=1e-4)
    metric = region_index.RegionMetric.fit(x)
    gain = np.linalg.norm(metric.matrix, axis=1)  # how far a unit step along each compared coordinate moves the scaled vector
    variance = y.var(axis=0)
    small, large = variance < variance.mean(), variance > 1.5 * variance.mean()
    assert small.sum() >= 3 and large.sum() >= 3
    np.testing.assert_allclose(gain[small], gain[small].mean(), rtol=0.05)  # all counted like a direction of mean variance
    sd = np.sqrt(variance[large]) * gain[large]
    np.testing.assert_allclose(sd, sd.mean(), rtol=0.05)  # evened out, as whitening does
    # plain whitening would make the least varying coordinate count 500 times the most varying one
    np.testing.assert_allclose(gain.max() / gain.min(), np.sqrt(variance.max() / variance.mean()), rtol=0.05)
    a, b = metric(x[:3000]), metric(x[3000:])
    assert abs(((a - b) ** 2).sum(axis=1).mean() / (2 * DIM) - 1.0) < 0.05
    parts = region_index.sum_moments([region_index.moments(x[:2500]), region_index.moments(x[2500:])], DIM)
    whole = region_index.RegionMetric.from_moments(*parts)
    np.testing.assert_allclose(whole(x[:10]), metric(x[:10]), rtol=1e-4, atol=1e-4)


def test_intensity_differences_count_linearly_near_zero_and_by_their_logarithm_beyond():
    """The compared scale: within ±KNEE units a difference counts as it is; beyond, by ratio, so
    15 against 45 units (a subtle lesion against a vessel in the liver) counts about as much as 150
    against 450 (calcium against bone), not a tenth of it; signs and the other coordinates kept."""
    d = np.zeros((6, DIM), np.float32)
    column = INTENSITY[5]  # a contrast to the far ring
    d[:, column] = np.array([15, 45, 150, 450, -15, 3]) / UNIT
    d[:, 14] = 0.25  # a band fraction: not an intensity
    c = comparable(d)
    assert abs(c[1, column] - c[0, column]) > 0.6 * abs(c[3, column] - c[2, column])
    assert abs(d[1, column] - d[0, column]) < 0.2 * abs(d[3, column] - d[2, column])
    assert c[4, column] == -c[0, column] and abs(c[5, column] - 3 / KNEE) < 1e-3
    np.testing.assert_array_equal(c[:, 14], d[:, 14])
    assert set(INTENSITY) == set(range(14)) | {19, 20}


def test_delete_compact_and_repair_keep_the_structure_right(tmp_path):
    index, fresh = tmp_path / "index", tmp_path / "fresh"
    write(index, 0, 200, step=25, shard_size=25)
    removed = delete(index, series=["2.25.93", "2.25.911"])
    assert removed == 20
    _, stored = answers(index)
    assert stored  # tombstones do not change the stored moments (the regions stay until compaction)
    compact(index, shard_size=64)
    assert verify(index).ok
    region_index.COUNTERS.update(moments=0, trained=0)
    after, stored = answers(index)
    assert stored and region_index.COUNTERS["moments"] == 0
    # the same regions as an index of the live items only
    with IndexWriter.open(fresh, "thumbnail:16", regions=True, shard_size=64) as writer:
        keep = [i for i in range(200) if i // 10 not in (3, 11)]
        metas, vectors, regions = items(0, 200)
        writer.add_embeddings([metas[i] for i in keep], vectors[keep], [regions[i] for i in keep])
    assert_same(after, answers(fresh, queries=(0, 7, 40, 111, 250))[0])
    # a damaged region part: named at open, rebuilt by repair without losing an item
    part = json.loads((index / "manifest.json").read_text())["shards"][0]["region_part"]["file"]
    data = bytearray((index / part).read_bytes())
    data[-30] ^= 0xFF
    (index / part).write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match=part):
        IndexStore.open(index)
    rec = repair(index)
    assert part in rec.rebuilt and not rec.dropped_shards
    region_index.COUNTERS.update(moments=0, trained=0)
    repaired, stored = answers(index)
    assert stored and region_index.COUNTERS["moments"] == 0
    assert_same(repaired, after)


def test_kill_9_while_the_structure_is_written_leaves_a_usable_index(tmp_path):
    index = tmp_path / "index"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
              f"from tests.indexer.test_region_index import write; write(Path({str(index)!r}), 0, 120, step=30)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDCBIR_TEST_KILL_AT": "region-fsync:3"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with IndexStore.open(index) as store:
        assert len(store.ids) == 60  # two commits landed, the third died writing its region part
    assert verify(index).ok
    assert answers(index)[1]
    env.pop("MEDCBIR_TEST_KILL_AT")
    resumed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not any(".tmp-" in p.name for p in index.iterdir())
    fresh = tmp_path / "fresh"
    write(fresh, 0, 120, step=120)
    assert_same(answers(index)[0], answers(fresh)[0])
    shutil.rmtree(fresh)


def test_verify_finds_a_region_part_that_does_not_match_its_shard(tmp_path):
    from medcbir.indexer.checksum import fast_checksum
    from medcbir.indexer.fsutil import sha256_file

    index = tmp_path / "index"
    write(index, 0, 20, step=20)
    write(index, 20, 60, step=40)
    assert verify(index).ok
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    first, second = manifest["shards"][0]["region_part"], manifest["shards"][1]["region_part"]
    # the second shard's moments under the first shard's name (its checksums recorded: only the content is wrong)
    with open(index / first["file"], "wb") as fh:
        fh.write((index / second["file"]).read_bytes())
    first.update(bytes=(index / first["file"]).stat().st_size, sha256=sha256_file(index / first["file"]),
                 xxh3=fast_checksum(index / first["file"]))
    manifest["shards"][0]["region_part"] = first
    path.write_text(json.dumps(manifest))
    with IndexStore.open(index):
        pass
    report = verify(index)
    assert not report.ok and any(first["file"] in p and "moments" in p for p in report.problems), report.problems


def test_retraining_the_slice_index_keeps_the_region_structure(tmp_path):
    index = tmp_path / "index"
    write(index, 0, 120, step=60, spec="IVF4,Flat")
    before, stored = answers(index)
    parts = [s["region_part"]["file"] for s in json.loads((index / "manifest.json").read_text())["shards"]]
    assert stored
    region_index.COUNTERS.update(moments=0, trained=0)
    result = retrain(index, seed=1)
    assert "skipped" not in result
    manifest = json.loads((index / "manifest.json").read_text())
    assert [s["region_part"]["file"] for s in manifest["shards"]] == parts and region_index.COUNTERS["moments"] == 0
    after, stored = answers(index)
    assert stored and verify(index).ok
    assert_same(after, before)
