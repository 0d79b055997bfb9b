"""Indexing the phantom archive: real DICOM in, real HDF5 shards and FAISS out."""

from __future__ import annotations

import hashlib
import hmac
import shutil
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from medcbir.errors import EncoderMismatch
from medcbir.indexer import IndexBusy, IndexStore, IndexWriter, index_archive, verify

from .conftest import FakeEncoder, Meta, make_encoder


def dicom_files(archive: Path) -> list[Path]:
    return sorted(archive.rglob("*.dcm"))


def test_every_slice_is_indexed_with_its_metadata(built_index, phantom_archive):
    index_dir, summary = built_index
    files = dicom_files(phantom_archive)
    others = [p for p in phantom_archive.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert summary.indexed == len(files) == 80
    assert sum(summary.skipped.values()) == len(others)  # the ground-truth files (labels*.csv, slices.csv, masks.h5, phantom.json)
    assert summary.shards == 5 and summary.already_present == 0

    store = IndexStore.open(index_dir)
    assert len(store.ids) == 80 and np.array_equal(store.ids, np.arange(80))
    assert store.exact and store.index_spec == "Flat"
    by_sop = {str(s): i for i, s in enumerate(store.columns["sop_instance_uid"])}
    key = (index_dir / "pseudonym.key").read_bytes()
    for path in files:  # oracle: pydicom's reading of every file
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = by_sop[ds.SOPInstanceUID]
        assert store.columns["series_instance_uid"][row] == ds.SeriesInstanceUID
        assert store.columns["study_instance_uid"][row] == ds.StudyInstanceUID
        # the path is sealed relative to the archive root; the store opens it with the key
        assert str(store.columns["source"][row]).startswith("sealed:") and path.parent.name not in str(store.columns["source"][row])
        assert store.source_path(store.columns["source"][row]) == str(path.absolute())
        expected = hmac.new(key, str(ds.PatientID).encode(), hashlib.sha256).hexdigest()[:32]
        assert store.columns["patient_pseudonym"][row] == expected
        for name in ("sop_instance_uid", "series_instance_uid", "patient_pseudonym", "body_part", "modality"):
            assert str(ds.PatientID) not in str(store.columns[name][row])  # no raw PatientID
    assert store.columns["frame"].dtype == np.int64 and store.columns["slice_position"].dtype == np.float64
    assert store.columns["pixel_spacing"].shape == (80, 2)


def test_stored_embeddings_are_the_encoders_and_self_is_top1(built_index, phantom_archive, encoder):
    from medcbir.imaging import read_dicom

    store = IndexStore.open(built_index[0])
    rows = [3, 41, 77]
    for row in rows:
        item = read_dicom(store.source_path(store.columns["source"][row]), key=store.key())[0]
        expected = encoder.embed(encoder.preprocessing.apply(item)[None])[0]
        np.testing.assert_allclose(store.embeddings(np.array([row]))[0], expected, atol=1e-5)
    queries = store.embeddings(store.ids)
    scores, ids = store.faiss_index.search(queries, 3)
    assert np.array_equal(ids[:, 0], store.ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_shards_hold_what_the_manifest_says(built_index):
    index_dir = built_index[0]
    store = IndexStore.open(index_dir)
    for entry in store.manifest["shards"]:
        path = index_dir / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        with h5py.File(path, "r") as f:
            emb = f["embeddings"][...]
            assert emb.dtype == np.float32 and emb.shape == (entry["items"], store.dim)
            assert f["embeddings"].chunks is None  # contiguous: memory-mappable
            assert hashlib.sha256(emb.tobytes()).hexdigest() == f.attrs["embeddings_sha256"]
            assert f.attrs["encoder_fingerprint"] == store.encoder_info["fingerprint"]
            assert f.attrs["metric"] == "ip"
            assert list(f["ids"][...]) == list(range(entry["first_id"], entry["last_id"] + 1))
            assert f["meta/sop_instance_uid"].dtype.kind == "S"
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_reindexing_the_same_archive_is_a_noop(index_copy, phantom_archive, encoder):
    before = {p.name: p.stat().st_mtime_ns for p in index_copy.iterdir() if p.name != "writer.lock"}
    generation = IndexStore.open(index_copy).generation
    summary = index_archive(phantom_archive, index_copy, encoder, shard_size=16, progress=False, workers=1)
    assert summary.indexed == 0 and summary.shards == 0
    assert summary.already_present == 80  # all skipped by source, without decoding
    assert IndexStore.open(index_copy).generation == generation
    after = {p.name: p.stat().st_mtime_ns for p in index_copy.iterdir() if p.name not in ("writer.lock", "quarantine.log")}
    assert after == {k: v for k, v in before.items() if k != "quarantine.log"}


def test_grown_archive_adds_exactly_the_new_patient(tmp_path, phantom_archive, encoder):
    from medcbir.imaging.phantom import make_archive

    archive = tmp_path / "archive"
    shutil.copytree(phantom_archive, archive)
    index_dir = tmp_path / "index"
    first = index_archive(archive, index_dir, encoder, shard_size=32, progress=False, workers=1)
    assert first.indexed == 80
    extra = make_archive(tmp_path / "extra", patients=1, slices=7, seed=99, size=128)
    new_files = dicom_files(extra.out)
    for path in new_files:
        dst = archive / "new-patient" / path.relative_to(extra.out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dst)
    second = index_archive(archive, index_dir, encoder, shard_size=32, progress=False, workers=1)
    assert second.indexed == len(new_files) == 7
    assert second.already_present == 80
    store = IndexStore.open(index_dir)
    assert len(store.ids) == 87
    sops = store.columns["sop_instance_uid"]
    assert len(np.unique(sops)) == 87
    new_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in new_files}
    assert new_sops == set(sops[80:])


def test_a_copied_archive_is_deduplicated_by_item_key(tmp_path, phantom_archive, index_copy, encoder):
    archive = tmp_path / "moved"
    shutil.copytree(phantom_archive, archive)
    summary = index_archive(archive, index_copy, encoder, shard_size=16, progress=False, workers=1)
    assert summary.indexed == 0 and summary.already_present == 80  # decoded, then known by key
    assert len(IndexStore.open(index_copy).ids) == 80


def test_wrong_encoder_is_refused(index_copy, phantom_archive, tmp_path):
    other = make_encoder(tmp_path / "other.pt", size=64, seed=1)
    with pytest.raises(EncoderMismatch, match="index built with encoder"):
        IndexWriter.open(index_copy, str(other))
    with pytest.raises(EncoderMismatch):
        index_archive(phantom_archive, index_copy, str(other), progress=False, workers=1)


def test_two_writers_in_one_process_share_the_index(index_copy, encoder):
    first = IndexWriter.open(index_copy, encoder)
    second = IndexWriter.open(index_copy, encoder)  # no IndexBusy: the lock is held per commit
    first.close()
    second.close()
    assert verify(index_copy).ok


def test_a_commit_waits_for_the_lock_then_reports_busy(index_copy, encoder):
    from medcbir.indexer.lock import WriterLock

    with WriterLock(index_copy):
        with pytest.raises(IndexBusy, match="pid"):
            IndexWriter.open(index_copy, encoder, lock_timeout=0.2)


def test_a_source_never_spans_two_shards_and_duplicates_are_dropped(tmp_path):
    metas = []
    for i in range(10):  # 10 sources × 3 frames
        for frame in range(3):
            m = Meta(i)
            m.frame = frame
            metas.append(m)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with IndexWriter.open(tmp_path / "ix", FakeEncoder(16), shard_size=4) as writer:
        assert writer.add_embeddings(metas[:14], emb[:14]) == 14
        assert writer.add_embeddings(metas[:14], emb[:14]) == 0
        assert writer.has_key("1.2.3.0", 2) and not writer.has_key("1.2.3.0", 3)
        assert writer.add_embeddings(metas[10:], emb[10:]) == 16
    store = IndexStore.open(tmp_path / "ix")
    assert len(store.ids) == 30
    np.testing.assert_array_equal(store.embeddings(store.ids), emb)
    shard_of_row = np.repeat(np.arange(len(store.manifest["shards"])), [s["items"] for s in store.manifest["shards"]])
    sources = store.columns["source"]
    for src in np.unique(sources):
        assert len(np.unique(shard_of_row[sources == src])) == 1


class MemorySource:
    """A Source-protocol object (like the DICOMweb source): URIs, not paths."""

    def __init__(self, archive: Path) -> None:
        from medcbir.imaging import WalkReport

        self.name = "mem://archive"
        self.report = WalkReport()
        self.files = {f"mem://{p.relative_to(archive)}": p.read_bytes() for p in dicom_files(archive)}
        self.fetched: list[str] = []

    def decoded(self, preprocessing, key, skip_source=None):
        from medcbir.imaging import decode_bytes

        for uri in sorted(self.files):
            self.report.files += 1
            if skip_source is not None and skip_source(uri):
                self.report.passed += 1
                continue
            self.fetched.append(uri)
            yield from decode_bytes(self.files[uri], uri, key, preprocessing)


def test_a_source_object_is_indexed_and_resumed_by_uri(tmp_path, phantom_archive, encoder):
    source = MemorySource(phantom_archive)
    summary = index_archive(source, tmp_path / "ix", encoder, shard_size=30, progress=False)
    assert summary.indexed == 80 and len(source.fetched) == 80
    store = IndexStore.open(tmp_path / "ix")
    assert set(store.columns["source"]) == set(source.files)
    again = MemorySource(phantom_archive)
    summary = index_archive(again, tmp_path / "ix", encoder, shard_size=30, progress=False)
    assert summary.indexed == 0 and again.fetched == [] and summary.already_present == 80


def test_an_archive_without_images_gives_an_empty_valid_index(tmp_path, encoder):
    from medcbir.indexer import verify

    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "notes.txt").write_text("not DICOM")
    summary = index_archive(archive, tmp_path / "ix", encoder, progress=False, workers=1)
    assert summary.indexed == 0 and summary.skipped == {"not-dicom": 1}
    store = IndexStore.open(tmp_path / "ix")
    assert len(store.ids) == 0 and store.faiss_index.ntotal == 0
    assert verify(tmp_path / "ix").ok
