"""The metadata column layer (``medcbir.indexer.columns``): what search reads and holds.

A synthetic index (embeddings given, full ``ItemMeta`` rows: several patients, studies, series,
multi-frame items, UIDs of two widths in different shards, lower-case and non-ASCII values) is
searched and its metadata read through the layer; every answer is checked against the whole
columns (``store.columns[name]``, the values the engine used to hold) and against brute force,
then again with the hash forced to collide (a constant, and three buckets): answers must not change.
"""

from __future__ import annotations

import numpy as np
import pytest

import medcbir.indexer.columns as columns_module
from medcbir.engine import Engine
from medcbir.engine.neighbour import plain
from medcbir.imaging import ItemMeta
from medcbir.indexer import IndexStore, IndexWriter
from medcbir.indexer.columns import hash_strings

N, DIM = 320, 16
BODY_PARTS = ("ABDOMEN", "CHEST", "abdomen", "Brustkorb–Bauch")


class Encoder:
    """Fingerprinted stand-in used only with ``add_embeddings`` (nothing to embed)."""

    def __init__(self) -> None:
        from medcbir.imaging import Preprocessing

        self.dim, self.fingerprint, self.source = DIM, "c" * 64, "synthetic"
        self.preprocessing = Preprocessing(size=32)

    def embed(self, images):  # pragma: no cover - add_embeddings never embeds
        raise AssertionError("not used")


def uid(i: int, long: bool) -> str:
    return f"1.2.826.0.1.3680043.8.498.10.{i + 1}" if long else f"1.2.3.{i + 1}"


def metas() -> list[ItemMeta]:
    out = []
    for i in range(N):
        patient, study, series = i // 40, i // 20, i // 10
        long = i >= N // 2  # the later shards' UID columns are wider
        frame = max(0, i % 10 - 7)  # items 7, 8, 9 of each series: frames 0-2 of one multi-frame instance
        out.append(ItemMeta(
            sop_instance_uid=uid(i - frame, long), frame=frame,
            series_instance_uid=uid(10_000 + series, long), study_instance_uid=uid(20_000 + study, long),
            modality=("CT", "MR", "ct")[series % 3], body_part=BODY_PARTS[series % 4],
            patient_pseudonym="" if patient == 5 else f"{patient:032x}", instance_number=i % 10, slice_position=2.5 * (i % 10),
            rows=64, cols=64, pixel_spacing=(0.7, 0.8), transfer_syntax="1.2.840.10008.1.2.1",
            source=f"/archive/p{patient}/{'é' if patient == 3 else ''}{i}.dcm", study_datetime=f"2020010{study % 9}120000"))
    return out


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, DIM))
    x = (centres[np.arange(N) // 30 % 12] + 0.6 * rng.standard_normal((N, DIM))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = tmp_path_factory.mktemp("metacols") / "index"
    with IndexWriter.open(out, Encoder(), index_spec="Flat", shard_size=32) as writer:
        writer.add_embeddings(metas(), x)
    return out


@pytest.fixture(scope="module")
def truth(index):
    """The whole columns (as the engine used to hold them) and the stored embeddings."""
    store = IndexStore.open(index)
    out = {name: store.columns[name] for name in store.columns}
    out["x"] = store.embeddings(store.ids).astype(np.float64)
    assert len(store.manifest["shards"]) == N // 32
    store.close()
    return out


HASHES = {
    "real": None,
    "constant": lambda values: np.full(len(columns_module.as_bytes(values).reshape(-1)), 7, dtype=np.uint64),
    "three buckets": lambda values, real=hash_strings: real(values) % np.uint64(3),
}


@pytest.fixture(params=list(HASHES))
def collided(request, monkeypatch, index):
    """An engine opened with the real hash, or one forced to collide (codes are built after the patch)."""
    if HASHES[request.param] is not None:
        monkeypatch.setattr(columns_module, "hash_strings", HASHES[request.param])
    engine = Engine.open(index)
    yield engine
    engine.close()


def brute(truth, row: int, k: int, admissible: np.ndarray) -> list[int]:
    scores = truth["x"] @ truth["x"][row]
    cand = np.flatnonzero(admissible)
    return cand[np.lexsort((cand, -scores[cand]))][:k].tolist()


def test_hash_ignores_the_width_and_separates_values():
    assert hash_strings(np.array([b"1.2.3"], dtype="S5"))[0] == hash_strings(np.array([b"1.2.3"], dtype="S64"))[0] == hash_strings(["1.2.3"])[0]
    values = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(5000)] + ["", "1", "1.2.3\x00x", "é"]
    assert len(np.unique(hash_strings(values))) == len(values)
    assert hash_strings(np.array(["é"]))[0] == hash_strings(np.array(["é".encode()], dtype="S9"))[0]


def test_rows_and_results_equal_the_whole_columns(index, truth):
    engine = Engine.open(index)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, N, 40), [0, N - 1, 5, 5, 200]])
    for name in engine.columns:
        taken = engine.columns.take(name, rows)
        assert taken.dtype == truth[name].dtype, name
        np.testing.assert_array_equal(taken, truth[name][rows])
        assert engine.meta_column(name, rows) == [plain(v) for v in truth[name][rows].tolist()]
        assert engine.columns.take(name, []).dtype == truth[name].dtype
    expected = [{name: plain(truth[name][r]) for name in engine.columns} for r in rows.tolist()]
    for meta in expected:
        meta["source"] = engine.source_path(meta["source"])
    assert engine.meta(rows) == expected
    assert [{k: v for k, v in m.items() if k != "id"} for m in engine.store.meta(rows)] == expected
    [hits] = engine.search([str(truth["sop_instance_uid"][70])], k=12, exclude="same-patient")
    assert [h.meta for h in hits] == [{name: plain(truth[name][h.id]) for name in engine.columns} for h in hits]
    hits[0].meta["modality"] = "changed"  # each neighbour has its own dict
    assert engine.meta([hits[0].id])[0]["modality"] == truth["modality"][hits[0].id]
    engine.close()


@pytest.mark.parametrize("name", ["patient_pseudonym", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "modality", "body_part", "frame"])
def test_masks_find_and_groups_equal_the_whole_columns(collided, truth, name, request):
    cols = collided.columns
    whole = truth[name]
    if cols.kind(name) == "hash":  # a forced hash makes different values share hashes: found while building
        assert (len(cols.codes(name).ambiguous) > 0) == (request.node.callspec.params["collided"] != "real")
    values = [whole[0], whole[N - 1], whole[171]]
    missing = "7.7.7" if whole.dtype.kind == "U" else 10**6
    for value in [*values, missing]:
        np.testing.assert_array_equal(cols.equal(name, value), whole == value)
    np.testing.assert_array_equal(cols.isin(name, [*values, missing]), np.isin(whole, values))
    if whole.dtype.kind == "U":
        upper = [str(whole[3]).upper(), "BRUSTKORB–BAUCH"]
        np.testing.assert_array_equal(cols.isin(name, upper, upper=True), np.isin(np.char.upper(whole), upper))
        assert [r.tolist() for r in cols.find(name, [*values, missing])] == [np.flatnonzero(whole == v).tolist() for v in [*values, missing]]
    rows = np.random.default_rng(1).integers(0, N, 100)
    codes, uniques = cols.groups(name, rows, ordered=True)
    expected_uniques, expected_codes = np.unique(whole[rows], return_inverse=True)
    np.testing.assert_array_equal(codes, expected_codes)
    assert uniques == [plain(v) for v in expected_uniques.tolist()]
    codes, _ = cols.groups(name, rows)
    assert (codes[:, None] == codes[None, :]).tolist() == (whole[rows][:, None] == whole[rows][None, :]).tolist()
    every = cols.row_codes(name)
    assert len(every) == N and (every[:, None] == every[None, :]).tolist() == (whole[:, None] == whole[None, :]).tolist()


def test_uid_lookup_equals_the_whole_columns(collided, truth):
    keys = list(zip(truth["sop_instance_uid"].tolist(), truth["frame"].tolist()))
    found = collided.lookup.find([u for u, _ in keys], [f for _, f in keys])
    assert found.tolist() == list(range(N))  # every (UID, frame) is one row
    assert collided.lookup.find(["7.7.7", str(truth["sop_instance_uid"][7]), "1.2.3.9"], [0, 5, 0]).tolist() == [-1, -1, -1]
    assert collided.lookup.find([]).tolist() == []


def test_search_answers_do_not_change_under_collisions(collided, truth, index):
    """Exclusions, filters, per-series caps, cases, series members and priors: the same answers
    with any hash, and the exclusions and filters those of brute force over the whole columns."""
    engine = collided
    every = np.ones(N, dtype=bool)
    for row in (3, 75, 130, 207, 290):
        query = f"{truth['sop_instance_uid'][row]}:{truth['frame'][row]}"
        others = np.arange(N) != row
        for exclude, column in (("same-patient", "patient_pseudonym"), ("same-study", "study_instance_uid"), ("same-series", "series_instance_uid")):
            [hits] = engine.search([query], k=15, exclude=exclude)
            keep = others & ((truth[column] != truth[column][row]) if truth[column][row] else every)
            assert [h.id for h in hits] == brute(truth, row, 15, keep), (row, exclude)
        filters = {"modality": "ct", "body_part": ["abdomen", "Brustkorb–Bauch"], "series": [str(truth["series_instance_uid"][s]) for s in (0, 150, 301)],
                   "study": [str(truth["study_instance_uid"][s]) for s in (0, 150, 301)]}
        [hits] = engine.search([query], k=20, exclude="same-patient", **filters)
        keep = others & (truth["patient_pseudonym"] != truth["patient_pseudonym"][row]) if truth["patient_pseudonym"][row] else others.copy()
        keep &= np.char.upper(truth["modality"]) == "CT"
        keep &= np.isin(np.char.upper(truth["body_part"]), ["ABDOMEN", "BRUSTKORB–BAUCH"])
        keep &= np.isin(truth["series_instance_uid"], filters["series"]) & np.isin(truth["study_instance_uid"], filters["study"])
        assert [h.id for h in hits] == brute(truth, row, 20, keep)
        # at most two hits per series: the walk over the exact ranking
        [hits] = engine.search([query], k=10, per_series=2)
        walk, seen = [], {}
        for i in brute(truth, row, N, others):
            s = truth["series_instance_uid"][i]
            if seen.get(s, 0) < 2:
                seen[s] = seen.get(s, 0) + 1
                walk.append(i)
        assert [h.id for h in hits] == walk[:10]
        assert [h.meta["sop_instance_uid"] for h in hits] == [str(truth["sop_instance_uid"][i]) for i in walk[:10]]
    for group_by in ("series", "study"):
        [cases] = engine.search_cases([[str(truth["sop_instance_uid"][r]) for r in (40, 41, 42)]], k=6, group_by=group_by)
        assert len(cases) == 6 and len({c.uid for c in cases}) == 6
        for case in cases:
            assert all(s.meta[f"{group_by}_instance_uid"] == case.uid for s in case.slices)
    series = str(truth["series_instance_uid"][123])
    rows = np.flatnonzero(truth["series_instance_uid"] == series)
    assert engine.series_members(series) == [f"{truth['sop_instance_uid'][r]}:{truth['frame'][r]}" for r in rows[::-1]]  # head (high z) first
    prior = engine.prior(str(truth["sop_instance_uid"][95])).to_dict()
    assert prior["studies"] and all(s["study_instance_uid"] != prior["query_study"] for s in prior["studies"])


def test_case_and_prior_answers_equal_the_real_hash(index, truth, monkeypatch):
    def answers():
        with Engine.open(index) as engine:
            cases = [[c.to_dict() for c in hits] for hits in engine.search_cases([[str(truth["sop_instance_uid"][r]) for r in (40, 41, 42)], str(truth["sop_instance_uid"][250])],
                                                                                   k=6, group_by=group_by, exclude="same-study")]
            prior = engine.prior(str(truth["sop_instance_uid"][95])).to_dict()
            members = engine.series_members(str(truth["series_instance_uid"][123]))
            [capped] = engine.search([str(truth["sop_instance_uid"][12])], k=8, per_series=1, modality="MR")
            return cases, prior, members, [h.to_dict() for h in capped]

    for group_by in ("series", "study"):
        real = answers()
        for forced in ("constant", "three buckets"):
            with monkeypatch.context() as m:
                m.setattr(columns_module, "hash_strings", HASHES[forced])
                assert answers() == real, (group_by, forced)


def test_after_a_search_no_whole_string_column_is_held(index, truth):
    engine = Engine.open(index)
    [hits] = engine.search([str(truth["sop_instance_uid"][100])], k=10, exclude="same-patient")
    assert len(hits) == 10 and all(h.meta["patient_pseudonym"] != truth["patient_pseudonym"][100] for h in hits)
    held = engine.columns.held()
    assert set(held) == {"sop_instance_uid", "patient_pseudonym"}
    assert engine.columns.held_bytes() <= 24 * N  # a hash (8 B) per row for each, and the UID index's row order (4 B)
    for codes in engine.columns._codes.values():
        for array in vars(codes).values():
            assert not (isinstance(array, np.ndarray) and array.dtype.kind in "SUO" and len(array) >= N // 4), codes
    engine.search([str(truth["sop_instance_uid"][5])], k=5, modality="CT", body_part="abdomen", per_series=1, exclude="same-study")
    assert engine.columns.held_bytes() <= (8 + 8 + 12 + 1 + 1 + 8) * N + 1000  # dictionary codes keep their (small) vocabulary
    engine.close()


def test_prior_matches_the_modality_without_regard_to_case(index, truth):
    from medcbir.engine.filters import column_is_in

    assert column_is_in(np.array(["CT", "ct", "MR"]), ("ct",), upper=True).tolist() == [True, True, False]
    assert column_is_in(np.array([b"CT", b"ct", b"MR"]), ("Ct",), upper=True).tolist() == [True, True, False]
    # item 25 is in series 2 (modality "ct") of patient 0's second study; the first study's series 0 is "CT"
    assert truth["modality"][25] == "ct" and truth["modality"][5] == "CT"
    with Engine.open(index) as engine:
        prior = engine.prior(str(truth["sop_instance_uid"][25])).to_dict()
    assert [s["study_instance_uid"] for s in prior["studies"]] == [str(truth["study_instance_uid"][5])]


def test_warming_builds_what_the_first_uid_query_needs_and_changes_no_answer(index, truth):
    """``Engine.warm`` (the plugin calls it at start) builds the UID lookup, the patient hashes, the
    shards' string widths and the stored rows' maps in a thread: the first query then builds
    nothing, and answers as an engine that was not warmed."""
    query = [str(truth["sop_instance_uid"][100])]
    with Engine.open(index) as cold:
        expected = [(h.id, h.score) for h in cold.search(query, k=10, exclude="same-patient")[0]]
    with Engine.open(index) as engine:
        engine.warm().join(30)
        assert set(engine.columns.held()) == {"sop_instance_uid", "patient_pseudonym"}
        assert set(engine.columns._widths) == set(engine.columns) and engine.store._maps is not None  # widths read, rows mapped
        built = dict(engine.columns._codes)
        assert [(h.id, h.score) for h in engine.search(query, k=10, exclude="same-patient")[0]] == expected
        assert all(engine.columns._codes[name] is codes for name, codes in built.items())  # nothing rebuilt
    engine = Engine.open(index)
    thread = engine.warm()
    engine.close()  # closed while warming: the thread ends quietly
    thread.join(30)
    assert not thread.is_alive()
