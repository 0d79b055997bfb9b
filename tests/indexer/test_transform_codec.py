"""Transform-coded shard storage (``tc4``/``tc6``/``tc8``): the codec, its codebook file, the rules
that choose it, and every reader and writer of shards with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from medcbir.errors import IndexCorrupt
from medcbir.indexer import IndexStore, IndexWriter, compact, compression, faiss_index, recall, repair, transform_codec, verify
from medcbir.indexer.shard import Decoder, read_embeddings
from medcbir.indexer.transform_codec import CODECS

from .conftest import FakeEncoder, Meta


def decaying(n: int, dim: int = 32, seed: int = 0, rate: float = 4.0, axes_seed: int = 99) -> np.ndarray:
    """Unit vectors with a decaying spectrum (variance e^(−2i/rate) along random orthogonal axes)
    around a shared direction: most of the variance in a few axes, as an encoder's embeddings."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(np.random.default_rng(axes_seed).standard_normal((dim, dim)))[0]
    x = (rng.standard_normal((n, dim)) * np.exp(-np.arange(dim) / rate)) @ axes.T + 0.3 * axes[:, 0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def isotropic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write(path, x, lo=0, chunk=500, shard_size=500, **kw):
    with IndexWriter.open(path, FakeEncoder(x.shape[1]), shard_size=shard_size, **kw) as w:
        for start in range(0, len(x), chunk):
            w.add_embeddings([Meta(lo + i) for i in range(start, min(start + chunk, len(x)))], x[start:start + chunk])


def _manifest(ix: Path) -> dict:
    return json.loads((ix / "manifest.json").read_text())


def _topk(base: np.ndarray, q: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return faiss.knn(np.ascontiguousarray(q), np.ascontiguousarray(base), k, metric=faiss.METRIC_INNER_PRODUCT)


def test_codec_round_trip_within_half_a_step_on_anisotropic_data(tmp_path):
    x = decaying(3000, 48, seed=1)
    fit, rows = x[:1500], x[1500:]
    codec = transform_codec.fit(fit, "tc6")
    # the bit budget is spent: 6 bits per dimension on average, more on the axes of larger variance
    assert codec.total_bits == 6 * 48 and codec.code_bytes == 36
    assert np.all(np.diff(codec.widths.astype(int)) <= 0) and codec.widths[0] > codec.widths[-1]
    stored, value_range = codec.encode(rows)
    assert stored.dtype == np.uint8 and stored.shape == (1500, 36) and value_range.shape == (2, codec.components)
    lo, step = value_range
    levels = 2.0 ** codec.widths - 1
    z = codec.coefficients(rows)
    codes = codec.unpack(stored)
    assert np.array_equal(codes, np.clip(np.rint((z - lo) / step), 0, levels))  # the bit fields hold the codes exactly
    # each coefficient inside the shard's range is decoded within half a step; those beyond (a range
    # narrower than the extremes where that costs less squared error: few-bit axes), at an end level
    decoded_z = codes * step + lo
    inside = (z >= lo) & (z <= lo + levels * step)
    assert np.all(np.abs(decoded_z - z)[inside] <= (step / 2 * 1.0001 + 1e-7)[np.nonzero(inside)[1]])
    assert np.all((codes == 0) | (codes == levels) | inside)
    decoded = codec.decode(stored, value_range)
    assert np.allclose(decoded, decoded_z @ codec.rotation + codec.mean, atol=1e-6)
    spread = ((rows - fit.mean(0)) ** 2).sum(1).mean()
    errors = {}
    for dtype in CODECS:
        c = transform_codec.fit(fit, dtype)
        errors[dtype] = float(((c.decode(*c.encode(rows)) - rows) ** 2).sum(1).mean() / spread)
    # relative squared error on rows the codebook was not fitted on: below 1 % at 4 bits, falling with the bits
    assert errors["tc4"] < 0.01 and errors["tc8"] < errors["tc6"] < errors["tc4"], errors
    # scoring in the rotated space gives the decoded rows' inner products, without decoding them
    q = x[:7]
    which = np.arange(len(stored)) % 7
    got = codec.scores(stored, value_range, codec.prepare(q), which)
    assert np.allclose(got, np.einsum("ij,ij->i", decoded, q[which]), atol=1e-5)
    # the codebook file: named by its content, loaded back equal, checked against a recorded sha256
    record = codec.save(tmp_path)
    assert record["file"] == f"codec-{record['sha256'][:16]}.npz" and (tmp_path / record["file"]).stat().st_size == record["bytes"]
    loaded = transform_codec.load(tmp_path / record["file"], record["sha256"])
    assert np.array_equal(loaded.decode(stored, value_range), decoded) and loaded.record() == codec.record()
    with pytest.raises(IndexCorrupt, match="differs from the one"):
        transform_codec.load(tmp_path / record["file"], "0" * 64, "shard-000001.h5")
    with pytest.raises(IndexCorrupt, match="is missing"):
        transform_codec.load(tmp_path / "codec-0000000000000000.npz", None, "shard-000001.h5")


def test_exact_rule_takes_a_transform_code_on_a_decaying_spectrum_and_keeps_float16_on_isotropic_data(tmp_path):
    x = decaying(1000, 32, seed=2)
    chosen = compression.choose_storage(x)
    dtype = chosen["dtype"]
    assert dtype in CODECS and chosen["tried"][dtype] >= compression.FLOAT16_RECALL, chosen
    smaller = [d for d in CODECS if CODECS[d] < CODECS[dtype]]
    assert all(chosen["tried"][d] < compression.FLOAT16_RECALL for d in smaller), chosen  # the fewest bits that pass
    # isotropic vectors: every axis matters as much, no code is free; auto keeps float16
    iso = isotropic(1000, 64, seed=3)
    chosen = compression.choose_storage(iso)
    assert chosen["dtype"] == "float16" and all(chosen["tried"][d] < compression.FLOAT16_RECALL for d in (*CODECS, "sq8")), chosen

    # end to end: the writer's auto choice, its codebook committed, each shard naming it
    ix = tmp_path / "auto"
    _write(ix, decaying(3000, 32, seed=2), shard_size=1000, chunk=1000, shard_dtype="auto")
    m = _manifest(ix)
    storage, book = m["storage"], m["storage"]["codebook"]
    assert storage["requested"] == "auto" and storage["dtype"] == dtype and storage["items"] == 1000
    assert book["file"].startswith("codec-") and book["dtype"] == dtype and book["fit_items"] == 1000 and book["xxh3"]
    assert (ix / book["file"]).stat().st_size == book["bytes"]
    for entry in m["shards"]:
        assert entry["codebook"]["file"] == book["file"]
        with h5py.File(ix / entry["file"], "r") as f:
            assert f.attrs["embeddings_codec"] == dtype and f.attrs["codebook"] == book["file"]
            assert f["embeddings"].shape == (1000, book["code_bytes"]) and f["embeddings"].dtype == np.uint8
    store = IndexStore.open(ix)
    vectors = store.embeddings(np.arange(3000))
    q = decaying(50, 32, seed=20)
    scores, ids = store.faiss_index.search(q, 10)  # exact search filled from the decoded shards
    exact_scores, exact_ids = _topk(vectors, q)
    assert np.allclose(scores, exact_scores, atol=1e-5) and (ids == exact_ids).mean() > 0.99
    store.close()
    assert verify(ix).ok
    iso_ix = tmp_path / "iso"
    _write(iso_ix, isotropic(1000, 64, seed=3), shard_size=1000, chunk=1000, shard_dtype="auto")
    storage = _manifest(iso_ix)["storage"]
    assert storage["dtype"] == "float16" and "codebook" not in storage and set(CODECS) <= set(storage["tried"])
    assert not any(p.name.startswith("codec-") for p in iso_ix.iterdir())  # nothing fitted for a refused code


def test_explicit_transform_code_waits_for_enough_items_and_read_embeddings_decodes(tmp_path):
    x = decaying(1300, 32, seed=4)
    ix = tmp_path / "tc6"
    # 40 items cannot fit a 32-d codebook (64 needed): that shard is float16, the next ones coded
    with IndexWriter.open(ix, FakeEncoder(32), shard_size=500, shard_dtype="tc6") as w:
        w.add_embeddings([Meta(i) for i in range(40)], x[:40])
        w.commit()
        w.add_embeddings([Meta(i) for i in range(40, 1300)], x[40:])
    m = _manifest(ix)
    assert m["storage"]["requested"] == m["storage"]["dtype"] == "tc6" and m["storage"]["codebook"]["fit_items"] == 500
    first, second = m["shards"][0], m["shards"][1]
    assert "codebook" not in first and second["codebook"]["file"] == m["storage"]["codebook"]["file"]
    with h5py.File(ix / first["file"], "r") as f:
        assert f["embeddings"].dtype == np.float16
    path = ix / second["file"]
    decoded = read_embeddings(path)
    assert decoded.dtype == np.float32 and decoded.shape == (500, 32) and np.abs(decoded - x[40:540]).max() < 0.02
    assert np.array_equal(read_embeddings(path, np.array([3, 17, 400])), decoded[[3, 17, 400]])
    with h5py.File(path, "r") as f:
        decoder = Decoder.of(f)
        assert decoder.transform is not None and decoder.width == m["storage"]["codebook"]["code_bytes"]
    store = IndexStore.open(ix)
    assert np.array_equal(store.embeddings(np.arange(40, 540)), decoded)
    store.close()
    # a shard away from its codebook cannot be read, and says why
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(path, elsewhere / path.name)
    with pytest.raises(IndexCorrupt, match=f"{path.name}: its codebook codec-.* is missing"):
        read_embeddings(elsewhere / path.name)
    # the storage is fixed with the first shard
    from medcbir.errors import ConfigError

    with pytest.raises(ConfigError, match="tc6"):
        IndexWriter.open(ix, FakeEncoder(32), shard_dtype="tc4")


def test_a_damaged_or_missing_codebook_is_reported_refused_and_repaired(tmp_path):
    x = decaying(1500, 32, seed=5)
    ix = tmp_path / "ix"
    _write(ix, x, shard_dtype="tc6")
    book = _manifest(ix)["storage"]["codebook"]["file"]

    damaged = tmp_path / "damaged"
    shutil.copytree(ix, damaged)
    data = bytearray((damaged / book).read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes
    (damaged / book).write_bytes(bytes(data))
    report = verify(damaged)
    assert not report.ok and any(p.startswith(f"{book}: checksum mismatch") for p in report.problems), report.problems
    with pytest.raises(IndexCorrupt, match=book):
        IndexStore.open(damaged)
    with pytest.raises(IndexCorrupt, match=f"shard-000001.h5: its codebook {book}"):
        IndexStore.open(damaged, verify="none")  # the shard's own record of its codebook catches it too
    with pytest.raises(IndexCorrupt, match=book):
        IndexWriter.open(damaged, FakeEncoder(32))

    missing = tmp_path / "missing"
    shutil.copytree(ix, missing)
    (missing / book).unlink()
    report = verify(missing)
    assert not report.ok and f"{book}: committed file is missing" in report.problems
    assert any("shard-000001.h5: its codebook" in p and "is missing" in p for p in report.problems), report.problems
    with pytest.raises(IndexCorrupt, match=f"{book}: committed file is missing"):
        IndexStore.open(missing)
    with pytest.raises(IndexCorrupt, match="is missing"):
        IndexStore.open(missing, verify="none")

    # the repair drops the shards coded with it (their keys kept for re-embedding) and the codebook;
    # the next writer fits a new one
    rec = repair(damaged)
    assert rec.dropped_items == 1500 and len(rec.dropped_shards) == 3 and book in rec.rebuilt
    m = _manifest(damaged)
    assert m["next_id"] == 0 and "codebook" not in m["storage"] and m["storage"]["dtype"] == "tc6"
    assert verify(damaged).ok
    _write(damaged, x[500:1500], lo=500)
    m = _manifest(damaged)
    assert m["next_id"] == 1000 and m["storage"]["codebook"]["file"] != book and m["storage"]["codebook"]["fit_items"] == 500
    assert verify(damaged).ok
    # the same rows fit the same codebook: written anew where it was lost
    repair(missing)
    _write(missing, x)
    m = _manifest(missing)
    assert m["storage"]["codebook"]["file"] == book and verify(missing).ok and len(IndexStore.open(missing, build_index=False)) == 1500


def test_a_shard_unlike_the_codebooks_sample_is_stored_in_float16(tmp_path, caplog):
    x = decaying(1500, 32, seed=10)
    drifted = decaying(500, 32, seed=11, axes_seed=7)  # the same spectrum along other axes: another modality
    ix = tmp_path / "ix"
    _write(ix, x[:1000], shard_dtype="tc6")
    codec = transform_codec.load(ix / _manifest(ix)["storage"]["codebook"]["file"])
    assert 0 < codec.error < 0.01 and not codec.drifted(codec.encode_measured(x[1000:])[2])
    assert codec.drifted(codec.encode_measured(drifted)[2])
    with caplog.at_level("WARNING", logger="medcbir.indexer.writer"):
        _write(ix, drifted, lo=1000)
    _write(ix, x[1000:], lo=1500)
    m = _manifest(ix)
    assert [bool(s.get("codebook")) for s in m["shards"]] == [True, True, False, True]
    assert "shard-000003.h5: the tc6 codebook" in caplog.text and "stored as float16" in caplog.text
    with h5py.File(ix / m["shards"][2]["file"], "r") as f:
        assert f["embeddings"].dtype == np.float16
    store = IndexStore.open(ix)
    assert np.abs(store.embeddings(np.arange(1000, 1500)) - drifted).max() < 1e-3
    store.close()
    assert verify(ix).ok


KILLED = r"""
import sys
sys.path.insert(0, sys.argv[2])
from tests.indexer.conftest import FakeEncoder, Meta
from tests.indexer.test_transform_codec import decaying
from medcbir.indexer import IndexWriter
x = decaying(2000, 32, seed=6)
with IndexWriter.open(sys.argv[1], FakeEncoder(32), shard_size=500, shard_dtype="tc6") as w:
    for a in range(0, 2000, 500):
        w.add_embeddings([Meta(i) for i in range(a, a + 500)], x[a:a + 500])
"""


@pytest.mark.parametrize("point, committed", [("codebook-fsync:1", 0), ("manifest-rename:1", 0), ("shard-fsync:3", 1000)])
def test_killed_while_writing_coded_shards_then_resumed(tmp_path, point, committed):
    root = Path(__file__).resolve().parents[2]
    ix = tmp_path / "ix"
    env = {**os.environ, "MEDCBIR_TEST_KILL_AT": point, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(ix), str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if committed:
        m = _manifest(ix)
        assert m["next_id"] == committed and m["storage"]["codebook"]
        store = IndexStore.open(ix)
        assert len(store) == committed
        store.close()
        assert verify(ix).ok
    else:  # nothing committed: what the kill left is a codebook (temporary or renamed) and no manifest
        assert not (ix / "manifest.json").exists() and any("codec-" in p.name for p in ix.iterdir())
    env.pop("MEDCBIR_TEST_KILL_AT")
    proc = subprocess.run([sys.executable, "-c", KILLED, str(ix), str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = _manifest(ix)
    assert m["next_id"] == 2000 and all(s["codebook"]["file"] == m["storage"]["codebook"]["file"] for s in m["shards"])
    # the leftovers are gone: one codebook, the committed one
    assert sorted(p.name for p in ix.iterdir() if "codec-" in p.name) == [m["storage"]["codebook"]["file"]]
    store = IndexStore.open(ix)
    assert len(store) == 2000 and np.abs(store.embeddings(np.arange(2000)) - decaying(2000, 32, seed=6)).max() < 0.02
    store.close()
    assert verify(ix).ok


def test_compaction_keeps_coded_rows_and_answers(tmp_path):
    x = decaying(2300, 32, seed=7)
    ix = tmp_path / "ix"
    _write(ix, x, shard_dtype="tc6")  # 4 shards of 500 and one of 300
    book = _manifest(ix)["storage"]["codebook"]["file"]
    with IndexWriter.open(ix, FakeEncoder(32)) as w:
        w.delete_sources([f"/synthetic/{i}.dcm" for i in range(500, 550)])
    q = decaying(40, 32, seed=70)
    before = IndexStore.open(ix)
    live = np.flatnonzero(before.live_mask)
    vectors = before.embeddings(live)
    uids = np.asarray(before.columns["sop_instance_uid"])[live]
    _, found = _topk(vectors, q)
    answers = uids[found]
    with h5py.File(ix / "shard-000003.h5", "r") as f:
        codes_3, range_3 = f["embeddings"][...], f["embeddings_range"][...]
    before.close()

    # shards of 400: each old shard's live rows become one new shard, their codes and range as they were
    assert compact(ix, shard_size=400)["rewritten"] == 4
    m = _manifest(ix)
    assert m["next_id"] == 2250 and all(s["codebook"]["file"] == book for s in m["shards"])
    with h5py.File(ix / m["shards"][2]["file"], "r") as f:
        assert np.array_equal(f["embeddings"][...], codes_3) and np.array_equal(f["embeddings_range"][...], range_3)
    after = IndexStore.open(ix)
    assert np.array_equal(after.embeddings(np.arange(2250)), vectors)
    scores, ids = after.faiss_index.search(q, 10)
    assert np.array_equal(np.asarray(after.columns["sop_instance_uid"])[ids], answers)
    after.close()
    assert verify(ix).ok

    # merging shards codes the merged rows again under their joint range: the answers stay
    with IndexWriter.open(ix, FakeEncoder(32)) as w:
        w.delete_sources([f"/synthetic/{i}.dcm" for i in range(600, 700)])
    assert compact(ix, shard_size=1000)["rewritten"] >= 2
    store = IndexStore.open(ix)
    uids = np.asarray(store.columns["sop_instance_uid"])
    merged = store.embeddings(np.arange(len(store)))
    keep = ~np.isin(uids, [f"1.2.3.{i}" for i in range(600, 700)])
    kept_before = ~np.isin(answers, [f"1.2.3.{i}" for i in range(600, 700)])
    assert np.abs(merged - x[np.asarray([int(u.rsplit(".", 1)[1]) for u in uids])]).max() < 0.02 and keep.all()
    _, ids = store.faiss_index.search(q, 10)
    got = uids[ids]
    overlap = np.mean([len(set(a) & set(b[k])) / k.sum() for a, b, k in zip(got, answers, kept_before)])
    assert overlap > 0.95, overlap
    store.close()
    assert verify(ix).ok and (ix / book).exists()


def test_refine_from_coded_shards_equals_exact_search_over_the_decoded_vectors(tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    x = decaying(2600, 64, seed=8, rate=8.0)
    ix = tmp_path / "ix"
    _write(ix, x, index_spec="PCAU16,IVF16,SQ8,Refine(Shards)", shard_dtype="tc6")
    store = IndexStore.open(ix)
    assert store.index_spec == "PCAU16,IVF16,SQ8,Refine(Shards)" and store.faiss_index.scores_of is not None
    vectors = store.embeddings(np.arange(len(store)))
    q = decaying(60, 64, seed=80, rate=8.0)
    # every list probed and every item re-ranked: the re-rank alone decides, from the coded shards
    scores, ids = store.faiss_index.search(q, 10, params=store.search_parameters(nprobe=16, k_factor=len(store) / 10))
    exact_scores, exact_ids = _topk(vectors, q)
    assert np.allclose(scores, exact_scores, atol=1e-5)
    assert (ids == exact_ids).mean() > 0.99  # the same answers (a swap only where two scores tie within 1e-5)
    # the scores come from the rows scored in the codebook's rotated space: the decoded rows' inner products
    assert np.allclose(scores, np.einsum("bkd,bd->bk", store.embeddings(ids.ravel()).reshape(60, 10, 64), q), atol=1e-5)
    # the default parameters: held-out recall as measured
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact_ids)]) >= 0.9
    store.close()
    assert verify(ix).ok
    # retraining reads the decoded vectors; the coded shards stay as they are
    from medcbir.indexer.retrain import retrain

    shards = [s["sha256"] for s in _manifest(ix)["shards"]]
    assert retrain(ix)["generation"] > 0 and [s["sha256"] for s in _manifest(ix)["shards"]] == shards
    store = IndexStore.open(ix)
    _, got = store.faiss_index.search(q, 10, params=store.search_parameters())
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact_ids)]) >= 0.9
    store.close()
    assert verify(ix).ok


def test_chain_rule_moves_to_a_new_codebook_and_the_old_one_goes_with_its_last_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 2000)
    monkeypatch.setattr(faiss_index, "AUTO_NLIST", 16)
    monkeypatch.setattr(compression, "SHARD_RERANK_DIMS", (16,))
    monkeypatch.setattr(compression, "AUTO_STORAGES", ("tc8", "float16"))  # the exact rule: 8 bits
    x = decaying(3000, 32, seed=9)
    ix = tmp_path / "ix"
    _write(ix, x, memory_budget="100", shard_dtype="auto")
    m = _manifest(ix)
    storage = m["storage"]
    assert m["index_spec"].endswith("Refine(Shards)") and storage["chain"]["from"] == "tc8"
    chosen = storage["dtype"]
    assert chosen in ("tc4", "tc6") and storage["chain"]["tried"][chosen] >= storage["chain"]["reference"] - recall.STORAGE_TOLERANCE
    first = m["shards"][0]["codebook"]["file"]
    assert storage["codebook"]["file"] != first and storage["codebook"]["dtype"] == chosen
    assert m["shards"][-1]["codebook"]["file"] == storage["codebook"]["file"]  # written after the training
    assert (ix / first).exists() and verify(ix).ok
    store = IndexStore.open(ix)
    _, got = store.faiss_index.search(x[::31], 10, params=store.search_parameters())
    _, exact = _topk(store.embeddings(np.arange(3000)), x[::31])
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]) >= 0.9
    store.close()
    # compaction rewrites every shard under the new codebook; the old one stays while a kept generation names it
    with IndexWriter.open(ix, FakeEncoder(32)) as w:
        w.delete_sources(["/synthetic/0.dcm"])
    compact(ix)
    m = _manifest(ix)
    assert {s["codebook"]["file"] for s in m["shards"]} == {storage["codebook"]["file"]} and (ix / first).exists()
    for i in range(3):  # three more generations: the ones naming the old codebook leave the window
        with IndexWriter.open(ix, FakeEncoder(32)) as w:
            w.delete_sources([f"/synthetic/{i + 1}.dcm"])
    assert (ix / first).exists()
    IndexWriter.open(ix, FakeEncoder(32)).close()  # the next writer removes what no kept generation names
    assert not (ix / first).exists() and (ix / storage["codebook"]["file"]).exists() and verify(ix).ok


def test_shard_dtype_on_the_command_line(tmp_path, phantom_archive, capsys):
    from medcbir.cli.main import main

    out = tmp_path / "ix"
    args = ["index", str(phantom_archive), "--out", str(out), "--encoder", "thumbnail:4", "--shard-size", "40", "--workers", "1",
            "--no-regions", "--no-progress", "--no-maintenance", "--json"]
    assert main([*args[:3], str(tmp_path / "bad"), *args[4:], "--shard-dtype", "tc5"]) == 2
    assert "--shard-dtype" in capsys.readouterr().err
    assert main([*args, "--shard-dtype", "tc6"]) == 0
    assert json.loads(capsys.readouterr().out)["total_items"] == 80
    m = _manifest(out)
    assert m["storage"]["dtype"] == "tc6" and m["storage"]["codebook"]["fit_items"] == 40 and m["shards"][0]["codebook"]
    assert verify(out).ok


def test_region_rewrite_keeps_a_coded_shards_codes(tmp_path):
    from medcbir.indexer.shard import ShardRegions, rewrite_regions

    x = decaying(600, 32, seed=12)
    ix = tmp_path / "ix"
    _write(ix, x, shard_size=600, chunk=600, shard_dtype="tc4")
    source = ix / "shard-000001.h5"
    regions = ShardRegions(np.array([0, 5]), np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int32), np.ones((2, 8), np.float32))
    rewrite_regions(source, ix / "shard-000001.r000009.h5", regions, "test")
    with h5py.File(source, "r") as a, h5py.File(ix / "shard-000001.r000009.h5", "r") as b:
        assert np.array_equal(a["embeddings"][...], b["embeddings"][...]) and np.array_equal(a["embeddings_range"][...], b["embeddings_range"][...])
        kept = ("embeddings_codec", "codebook", "codebook_sha256", "embeddings_sha256")
        assert {k: a.attrs[k] for k in kept} == {k: b.attrs[k] for k in kept}
    assert np.array_equal(read_embeddings(ix / "shard-000001.r000009.h5"), read_embeddings(source))


def test_streamed_exact_searches_coded_shards_in_the_rotated_space_with_the_decoded_ranking(tmp_path, monkeypatch):
    from medcbir.indexer import remeasure

    x = decaying(1600, 32, seed=12)
    ix = tmp_path / "tc8"
    with IndexWriter.open(ix, FakeEncoder(32), shard_size=400, shard_dtype="tc8") as w:
        w.add_embeddings([Meta(i) for i in range(1600)], x)
    store = IndexStore.open(ix)
    book = store.codebook()
    assert book is not None and book.dtype == "tc8"
    decoded = store.embeddings(store.ids)
    rows = recall.query_rows(1600, 40)
    # the rotated path reads coefficients, never decoded rows
    monkeypatch.setattr(IndexStore, "fill_rows", lambda *a, **k: pytest.fail("decoded rows read"))
    queries, exact = remeasure.streamed_exact(store, rows, block=300)  # blocks across shard boundaries
    store.close()
    assert np.array_equal(queries, decoded[rows])
    want = recall.exact_neighbours(decoded, rows)
    # the same neighbours as brute force over the decoded rows (float rounding may swap exact ties)
    assert np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact, want)]) > 0.995


def test_an_index_of_float16_and_coded_shards_has_no_single_codebook(tmp_path):
    from medcbir.indexer import remeasure

    x = decaying(1300, 32, seed=4)
    ix = tmp_path / "mixed"
    with IndexWriter.open(ix, FakeEncoder(32), shard_size=500, shard_dtype="tc6") as w:
        w.add_embeddings([Meta(i) for i in range(40)], x[:40])  # too few to fit a codebook: float16
        w.commit()
        w.add_embeddings([Meta(i) for i in range(40, 1300)], x[40:])
    store = IndexStore.open(ix)
    assert store.codebook() is None
    with pytest.raises(ValueError, match="one codebook"):
        store.fill_coefficients(np.empty((10, 32), np.float32), 0, 10)
    decoded = store.embeddings(store.ids)
    rows = recall.query_rows(1300, 30)
    _, exact = remeasure.streamed_exact(store, rows, block=256)
    store.close()
    assert np.array_equal(exact, recall.exact_neighbours(decoded, rows))
