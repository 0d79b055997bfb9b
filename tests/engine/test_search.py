"""Engine search on a real indexed phantom archive, checked against brute force on the stored
embeddings (read through the indexer's store, not through the engine)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medcbir.engine import Engine
from medcbir.errors import ConfigError, DecodeError, EncoderMismatch, IndexNotFound
from tests.engine.indexes import copy_index, make_encoder


@pytest.fixture(scope="module")
def engine(flat_index):
    return Engine.open(flat_index)


@pytest.fixture(scope="module")
def truth(flat_index):
    """Stored embeddings and metadata columns, read with the indexer's reader (the oracle's input)."""
    from medcbir.indexer import IndexStore

    store = IndexStore.open(flat_index)
    ids = np.asarray(store.ids)
    out = {"ids": ids, "x": store.embeddings(ids).astype(np.float64)}
    out.update({name: np.asarray(store.columns[name]) for name in store.columns})
    out["source"] = np.asarray([store.source_path(s) for s in out["source"]])  # sealed → the file's path
    store.close()
    return out


def brute_force(truth, query: np.ndarray, k: int, admissible: np.ndarray) -> list[int]:
    """Ids of the k best admissible items by inner product (float64, ties by id)."""
    scores = truth["x"] @ np.asarray(query, dtype=np.float64)
    cand = np.flatnonzero(admissible)
    order = np.lexsort((truth["ids"][cand], -scores[cand]))
    return truth["ids"][cand[order[:k]]].tolist()


def test_indexed_query_is_not_its_own_neighbour_unless_asked(engine, truth):
    row = 17
    everything = np.ones(len(truth["ids"]), bool)
    others = truth["ids"] != truth["ids"][row]
    for query in (truth["sop_instance_uid"][row], truth["source"][row]):
        [hits] = engine.search([query], k=5)
        assert truth["ids"][row] not in [n.id for n in hits] and len(hits) == 5
        assert [n.id for n in hits] == brute_force(truth, truth["x"][row], 5, others)
    # an embedding or a bare array is not known to be an item: nothing is left out
    [hits] = engine.search(truth["x"][row].astype(np.float32), k=5)
    assert [n.id for n in hits] == brute_force(truth, truth["x"][row], 5, everything)


def test_indexed_slice_is_its_own_top1_with_include_self(engine, truth, phantom_archive):
    row = 17
    uid = truth["sop_instance_uid"][row]
    [by_uid] = engine.search([uid], k=5, include_self=True)
    assert by_uid[0].id == truth["ids"][row]
    assert by_uid[0].score == pytest.approx(1.0, abs=1e-5)
    assert [n.rank for n in by_uid] == [1, 2, 3, 4, 5]
    assert by_uid[0].meta["sop_instance_uid"] == uid and isinstance(by_uid[0].meta["frame"], int)
    # the DICOM file itself, decoded and embedded again, finds the same item with score ≈ 1
    [by_file] = engine.search([truth["source"][row]], k=5, include_self=True)
    assert by_file[0].id == truth["ids"][row]
    assert by_file[0].score == pytest.approx(1.0, abs=1e-4)
    assert brute_force(truth, truth["x"][row], 5, np.ones(len(truth["ids"]), bool)) == [n.id for n in by_uid]


def test_mixed_queries_are_one_batch(engine, truth, monkeypatch):
    from medcbir.imaging import Decoded, read_dicom

    row = 3
    path = truth["source"][row]
    item = read_dicom(path)[0]
    prep = engine.encoder.preprocessing
    calls = []
    real_embed = engine.encoder.embed
    monkeypatch.setattr(engine.encoder, "embed", lambda images, *a, **kw: calls.append(len(images)) or real_embed(images, *a, **kw))
    queries = [truth["sop_instance_uid"][row], path, truth["x"][row].astype(np.float32), prep.apply(item), item.pixels, item, Decoded(item.meta, prep.apply(item))]
    results = engine.search(queries, k=3, include_self=True)
    assert calls == [5]  # file, preprocessed array, raw H×W array, Item, Decoded: one batch
    assert len(results) == len(queries)
    for hits in results:
        assert hits[0].id == truth["ids"][row]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    # by default the queries known to be the indexed item (UID, file, Item, Decoded) skip it
    results = engine.search(queries, k=3)
    assert [hits[0].id == truth["ids"][row] for hits in results] == [False, False, True, True, True, False, False]
    vectors = engine.embed(queries)
    assert vectors.shape == (len(queries), engine.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # a B×D array is a batch of embeddings
    batch = engine.search(truth["x"][:4].astype(np.float32), k=2, include_self=True)
    assert [hits[0].id for hits in batch] == truth["ids"][:4].tolist()


@pytest.mark.parametrize("exclude, column", [("same-patient", "patient_pseudonym"), ("same-study", "study_instance_uid")])
def test_exclusions_are_per_query(engine, truth, exclude, column):
    rows = [0, 21, 45, 78]  # one slice of each patient, searched in one call
    uids = truth["sop_instance_uid"][rows].tolist()
    results = engine.search(uids, k=10, exclude=exclude)
    for row, hits in zip(rows, results):
        admissible = truth[column] != truth[column][row]
        assert len(hits) == 10
        assert all(n.meta[column] != truth[column][row] for n in hits)
        assert [n.id for n in hits] == brute_force(truth, truth["x"][row], 10, admissible)


def test_metadata_filters(engine, truth):
    row = 30
    uid = truth["sop_instance_uid"][row]
    series = truth["series_instance_uid"][65]
    [hits] = engine.search([uid], k=10, series=[series])
    # FAISS selectors, not over-fetching: exactly K results even though 3/4 of items are excluded
    assert len(hits) == 10 and {n.meta["series_instance_uid"] for n in hits} == {series}
    assert [n.id for n in hits] == brute_force(truth, truth["x"][row], 10, truth["series_instance_uid"] == series)

    part = truth["body_part"][row]
    [hits] = engine.search([uid], k=50, body_part=part.lower())
    n_part = int(np.sum(truth["body_part"] == part))
    assert len(hits) == min(50, n_part) and all(n.meta["body_part"] == part for n in hits)

    assert len(engine.search([uid], k=5, modality="CT")[0]) == 5
    assert engine.search([uid], k=5, modality="MR") == [[]]
    study = truth["study_instance_uid"][0]
    [hits] = engine.search([uid], k=100, study=study, exclude="same-patient")
    # the query's own patient is in another study: all of that study's 20 items remain
    assert len(hits) == int(np.sum(truth["study_instance_uid"] == study))


def test_tombstones_are_honoured(flat_index, truth, tmp_path):
    from medcbir.indexer import delete

    index = copy_index(flat_index, tmp_path / "index")
    series = truth["series_instance_uid"][5]
    assert delete(index, series=[series]) == 20
    engine = Engine.open(index)
    assert len(engine) == 60
    row = 50
    [hits] = engine.search([truth["sop_instance_uid"][row]], k=80, include_self=True)
    assert len(hits) == 60 and series not in {n.meta["series_instance_uid"] for n in hits}
    assert [n.id for n in hits] == brute_force(truth, truth["x"][row], 80, truth["series_instance_uid"] != series)
    with pytest.raises(ConfigError, match="deleted"):
        engine.search([truth["sop_instance_uid"][5]], k=3)


def test_wrong_encoder_is_refused(flat_index, tmp_path):
    other = make_encoder(tmp_path / "other.pt", seed=1)
    with pytest.raises(EncoderMismatch) as info:
        Engine.open(flat_index, encoder=other)
    assert "\n" not in str(info.value) and "encoder" in str(info.value)


def test_bad_queries_fail_with_one_line(engine, tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02" * 50)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    for bad in (garbage, text):
        with pytest.raises(DecodeError) as info:
            engine.search([str(bad)], k=3)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="dimension"):
        engine.search(np.ones((2, 10), np.float32), k=3)
    with pytest.raises(ConfigError, match="not a SOP Instance UID"):
        engine.search(["1.2.3.4.5"], k=3)
    with pytest.raises(ConfigError, match="exclude"):
        engine.search(["1.2.3"], k=3, exclude="same-planet")
    with pytest.raises(IndexNotFound):
        Engine.open(tmp_path / "nowhere")


def test_labels_file_uids_resolve(engine, phantom_archive):
    with open(Path(phantom_archive) / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = engine.lookup.find([r["sop_instance_uid"] for r in rows], [int(r["frame"]) for r in rows])
    assert (ids >= 0).all() and len(set(ids.tolist())) == len(rows) == len(engine)


def test_unindexed_file_of_a_known_patient_is_excluded_by_pseudonym(engine, truth, tmp_path):
    """A new slice of an indexed patient: its pseudonym (computed with the index's key) matches."""
    import pydicom

    row = 44
    ds = pydicom.dcmread(truth["source"][row])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.4243"  # a new study of the same patient
    path = tmp_path / "new-slice.dcm"
    ds.save_as(path)
    [hits] = engine.search([str(path)], k=20, exclude="same-patient")
    patient = truth["patient_pseudonym"][row]
    assert len(hits) == 20 and all(n.meta["patient_pseudonym"] != patient for n in hits)
    [hits] = engine.search([str(path)], k=1)
    assert hits[0].id == truth["ids"][row] and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_k_beyond_the_live_items_answers_every_live_item(flat_index, truth, tmp_path):
    from medcbir.indexer import delete

    index = copy_index(flat_index, tmp_path / "index")
    series = truth["series_instance_uid"][5]
    delete(index, series=[series])
    engine = Engine.open(index)
    row = 50
    [hits] = engine.search([truth["sop_instance_uid"][row]], k=50_000_000, include_self=True)
    assert [n.id for n in hits] == brute_force(truth, truth["x"][row], 60, truth["series_instance_uid"] != series)
    [cases] = engine.search_cases([truth["sop_instance_uid"][row]], k=50_000_000, group_by="series")
    assert len(cases) == 3 and series not in {c.uid for c in cases}


def test_an_index_of_an_empty_archive_answers_one_clear_error(tmp_path, small_encoder, phantom_archive):
    from medcbir.engine import evaluate
    from medcbir.indexer import index_archive

    (tmp_path / "empty").mkdir()
    index_archive(tmp_path / "empty", tmp_path / "index", str(small_encoder), progress=False, workers=1)
    engine = Engine.open(tmp_path / "index")
    query = next(phantom_archive.rglob("*.dcm"))
    for ask in (lambda: engine.search([query], k=3), lambda: engine.search_cases([query], k=3),
                lambda: engine.prior(query), lambda: evaluate(engine, phantom_archive / "labels.csv")):
        with pytest.raises(ConfigError, match="holds no live item"):
            ask()
