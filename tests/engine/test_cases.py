"""Case-level search, hits per series and the prior exam on a real multi-study index, each checked
against an independent brute-force computation over the stored embeddings."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from medcbir.engine import Engine
from medcbir.errors import ConfigError
from tests.engine.indexes import build_index
from tests.engine.multistudy import make_multistudy, read_levels


@pytest.fixture(scope="module")
def multistudy(phantom_archive, tmp_path_factory):
    return make_multistudy(phantom_archive, tmp_path_factory.mktemp("multistudy") / "archive")


@pytest.fixture(scope="module")
def index(multistudy, small_encoder, tmp_path_factory):
    return build_index(multistudy, tmp_path_factory.mktemp("msindex") / "index", small_encoder)


@pytest.fixture(scope="module")
def engine(index):
    return Engine.open(index)


@pytest.fixture(scope="module")
def truth(index):
    from medcbir.indexer import IndexStore

    store = IndexStore.open(index)
    ids = np.asarray(store.ids)
    out = {"ids": ids, "x": store.embeddings(ids).astype(np.float64)}
    out.update({name: np.asarray(store.columns[name]) for name in store.columns})
    out["source"] = np.asarray([store.source_path(str(v)) for v in out["source"]])  # sealed records opened
    store.close()
    return out


def ranking(truth, vector, admissible) -> list[tuple[int, float]]:
    """All admissible items by inner product (float64), best first, ties by id."""
    scores = truth["x"] @ np.asarray(vector, dtype=np.float64)
    cand = np.flatnonzero(admissible)
    order = np.lexsort((truth["ids"][cand], -scores[cand]))
    return [(int(truth["ids"][c]), float(scores[c])) for c in cand[order]]


def test_index_holds_several_studies_per_patient(truth):
    studies = defaultdict(set)
    for p, s in zip(truth["patient_pseudonym"], truth["study_instance_uid"]):
        studies[p].add(s)
    assert sorted(len(v) for v in studies.values()) == [2, 2, 3, 3]
    assert len(truth["ids"]) == 4 * 20 + 4 * (17 + 16) + 2 * 20


@pytest.mark.parametrize("row", [5, 100, 200])
def test_per_series_never_more_than_n_and_equals_the_capped_ranking(engine, truth, row):
    uid = truth["sop_instance_uid"][row]
    others = truth["ids"] != truth["ids"][row]
    full = ranking(truth, truth["x"][row], others)
    for n in (1, 2, 3):
        [hits] = engine.search([uid], k=12, per_series=n)
        counts = defaultdict(int)
        for h in hits:
            counts[h.meta["series_instance_uid"]] += 1
        assert len(hits) == 12 and max(counts.values()) <= n
        # oracle: walk the full ranking, keep a hit while its series has < n kept
        kept, seen = [], defaultdict(int)
        for id_, _ in full:
            series = truth["series_instance_uid"][id_]
            if seen[series] < n:
                seen[series] += 1
                kept.append(id_)
        assert [h.id for h in hits] == kept[:12]
    [plain] = engine.search([uid], k=12, per_series=0)
    assert [h.id for h in plain] == [i for i, _ in full[:12]]
    # a cap that cannot be filled returns what there is (12 series in the index, 1 each)
    [few] = engine.search([uid], k=40, per_series=1)
    assert len(few) == len(set(truth["series_instance_uid"].tolist()))
    with pytest.raises(ConfigError, match="per_series"):
        engine.search([uid], k=3, per_series=-1)


def brute_force_cases(truth, member_rows, member_vectors, k, pool, column, per_group, admissible):
    """The stated ranking rule, computed independently from the full score matrix."""
    pools = []
    for vec in member_vectors:
        pools.append(ranking(truth, vec, admissible)[:pool])
    groups = sorted({truth[column][i] for p in pools for i, _ in p})
    score, hits, best_slice = {}, defaultdict(int), defaultdict(dict)
    for g in groups:
        per_member = []
        for p in pools:
            in_g = [s for i, s in p if truth[column][i] == g]
            per_member.append(max(in_g) if in_g else (min(s for _, s in p) if p else 0.0))
            for i, s in p:
                if truth[column][i] == g:
                    hits[g] += 1
                    best_slice[g][i] = max(best_slice[g].get(i, -np.inf), s)
        score[g] = float(np.mean(per_member))
    order = sorted(groups, key=lambda g: (-score[g], -hits[g], g))[:k]
    return [(g, score[g], hits[g], sorted(best_slice[g].items(), key=lambda t: (-t[1], t[0]))[:per_group]) for g in order]


@pytest.mark.parametrize("group_by, column", [("study", "study_instance_uid"), ("series", "series_instance_uid")])
def test_group_by_equals_brute_force_for_an_image_and_a_series(engine, truth, group_by, column):
    row = 47
    own = truth["ids"] == truth["ids"][row]
    live = np.ones(len(truth["ids"]), bool)
    [cases] = engine.search_cases([truth["sop_instance_uid"][row]], k=5, group_by=group_by, hits=40, per_group=3)
    want = brute_force_cases(truth, [row], truth["x"][[row]], 5, 40, column, 3, live & ~own)
    assert [(c.uid, c.n_hits, [s.id for s in c.slices]) for c in cases] == [(g, n, [i for i, _ in sl]) for g, _, n, sl in want]
    np.testing.assert_allclose([c.score for c in cases], [s for _, s, _, _ in want], atol=1e-5)
    assert [c.rank for c in cases] == list(range(1, len(cases) + 1)) and len(cases) >= 2
    assert all(c.meta[column] == c.uid for c in cases)
    # one image: the group score is its best slice's score
    assert all(c.score == pytest.approx(c.slices[0].score, abs=1e-6) for c in cases)

    # a whole series as one query: its slices embedded (here: stored) and aggregated
    series = truth["series_instance_uid"][150]
    members = engine.series_members(series)
    rows = [int(np.flatnonzero(truth["sop_instance_uid"] == m.split(":")[0])[0]) for m in members]
    assert len(rows) == int(np.sum(truth["series_instance_uid"] == series))
    z = truth["slice_position"][rows]
    assert list(z) == sorted(z, reverse=True)  # head to feet
    [cases] = engine.search_cases([members], k=4, group_by=group_by, hits=30, per_group=2, exclude="same-patient")
    admissible = truth["patient_pseudonym"] != truth["patient_pseudonym"][150]
    want = brute_force_cases(truth, rows, truth["x"][rows], 4, 30, column, 2, admissible)
    assert [(c.uid, c.n_hits, [s.id for s in c.slices]) for c in cases] == [(g, n, [i for i, _ in sl]) for g, _, n, sl in want]
    np.testing.assert_allclose([c.score for c in cases], [s for _, s, _, _ in want], atol=1e-5)


def test_series_query_leaves_out_its_own_series(engine, truth):
    series = truth["series_instance_uid"][150]
    [cases] = engine.search_cases([engine.series_members(series)], k=3, group_by="series")
    assert series not in [c.uid for c in cases]
    [cases] = engine.search_cases([engine.series_members(series)], k=1, group_by="series", include_self=True)
    assert cases[0].uid == series and cases[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="group_by"):
        engine.search_cases(["1.2.3"], group_by="patient")
    with pytest.raises(ConfigError, match="no live item"):
        engine.series_members("1.2.3.4")


@pytest.fixture(scope="module")
def levels(multistudy):
    return read_levels(multistudy / "levels.csv")


def test_prior_lists_the_patients_other_studies_newest_first(engine, truth, levels):
    first_patient = sorted({v[0] for v in levels.values()})[0]  # has exams A, B and C
    row = next(i for i, u in enumerate(truth["sop_instance_uid"]) if levels[u][1] == "A" and levels[u][0] == first_patient)
    result = engine.prior(truth["sop_instance_uid"][row])
    patient = truth["patient_pseudonym"][row]
    expected = {s for s, p in zip(truth["study_instance_uid"], truth["patient_pseudonym"]) if p == patient} - {truth["study_instance_uid"][row]}
    assert {s.study_instance_uid for s in result.studies} == expected and len(expected) == 2
    dates = [s.study_datetime for s in result.studies]
    assert dates == sorted(dates, reverse=True) and all(len(d) == 14 for d in dates)
    assert [s.relation for s in result.studies] == ["earlier", "earlier"]
    assert result.context_slices == 20
    payload = result.to_dict()
    for study in payload["studies"]:
        study["slice"].pop("source")  # a file path: not part of the answer checked here
    text = json.dumps(payload)
    import pydicom

    raw_id = str(pydicom.dcmread(truth["source"][row], stop_before_pixels=True).PatientID)
    assert raw_id not in text and patient not in text  # neither the PatientID nor even the pseudonym
    # from the earlier exam, the current one is "later"
    b_row = next(i for i, u in enumerate(truth["sop_instance_uid"]) if levels[u][1] == "B" and truth["patient_pseudonym"][i] == patient)
    assert "later" in [s.relation for s in engine.prior(truth["sop_instance_uid"][b_row]).studies]


def test_prior_finds_the_slice_at_the_same_level(engine, truth, levels):
    """Series alignment: the corresponding slice is within one level of the truth for ≥ 90 % of
    the current-exam slices, although the earlier exams are shifted, cropped and noisier."""
    errors = []
    for row, uid in enumerate(truth["sop_instance_uid"]):
        if levels[uid][1] != "A":
            continue
        for study in engine.prior(uid).studies:
            errors.append(abs(levels[study.slice.meta["sop_instance_uid"]][2] - levels[uid][2]))
    errors = np.asarray(errors)
    assert len(errors) == 80 * 1 + 40 * 1  # every patient has B, patients 0 and 1 also C
    assert np.mean(errors <= 1) >= 0.9, np.bincount(errors)


def test_prior_of_an_unindexed_file_and_of_an_array(engine, truth, tmp_path, levels):
    import pydicom

    row = 10
    ds = pydicom.dcmread(truth["source"][row])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.777"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.778"  # a new exam of a known patient
    path = tmp_path / "new.dcm"
    ds.save_as(path)
    result = engine.prior(str(path))
    patient = truth["patient_pseudonym"][row]
    assert len(result.studies) == len({s for s, p in zip(truth["study_instance_uid"], truth["patient_pseudonym"]) if p == patient})
    assert result.context_slices == 1  # one slice: its most similar slice in each study
    with pytest.raises(ConfigError, match="patient"):
        engine.prior(truth["x"][row].astype(np.float32))
