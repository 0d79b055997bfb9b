"""``medcbir search`` with --per-series, --include-self, --group-by, --query-series/folders and --prior."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from medcbir.cli.main import main
from tests.engine.indexes import build_index, small_encoder  # noqa: F401 - fixtures
from tests.engine.multistudy import make_multistudy


@pytest.fixture(scope="module")
def archive(phantom_archive, tmp_path_factory):
    return make_multistudy(phantom_archive, tmp_path_factory.mktemp("cli-ms") / "archive")


@pytest.fixture(scope="module")
def index(archive, small_encoder, tmp_path_factory):
    return build_index(archive, tmp_path_factory.mktemp("cli-ms-index") / "index", small_encoder)


@pytest.fixture(scope="module")
def columns(index):
    from medcbir.indexer import IndexStore

    store = IndexStore.open(index)
    out = {name: np.asarray(store.columns[name]) for name in store.columns}
    store.close()
    return out


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_is_two_per_series_and_no_self(index, columns, capsys):
    uid = columns["sop_instance_uid"][30]
    code, out, err = run(capsys, "search", index, uid, "-k", "8", "--json")
    assert code == 0, err
    hits = json.loads(out)[0]["neighbours"]
    assert len(hits) == 8 and max(Counter(h["series_instance_uid"] for h in hits).values()) <= 2
    assert uid not in [h["sop_instance_uid"] for h in hits]
    code, out, _ = run(capsys, "search", index, uid, "-k", "8", "--json", "--per-series", "0", "--include-self")
    hits = json.loads(out)[0]["neighbours"]
    assert hits[0]["sop_instance_uid"] == uid and hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and len(hits) == 8
    code, out, _ = run(capsys, "search", index, uid, "-k", "12", "--json", "--per-series", "1")
    assert max(Counter(h["series_instance_uid"] for h in json.loads(out)[0]["neighbours"]).values()) == 1


def test_group_by_study_with_image_uid_and_folder_queries(index, archive, columns, capsys):
    uid = columns["sop_instance_uid"][30]
    folder = next((archive).glob("*/study-B/B1"))
    code, out, err = run(capsys, "search", index, uid, folder, "--group-by", "study", "-k", "3", "--json", "--exclude", "same-patient")
    assert code == 0, err
    payload = json.loads(out)
    assert [p["query"] for p in payload] == [uid, str(folder)] and all(p["group_by"] == "study" for p in payload)
    for entry in payload:
        cases = entry["cases"]
        assert [c["rank"] for c in cases] == [1, 2, 3]
        assert [c["score"] for c in cases] == sorted((c["score"] for c in cases), reverse=True)
        assert all(1 <= len(c["slices"]) <= 3 and c["uid"] == c["study_instance_uid"] for c in cases)
    code, out, err = run(capsys, "search", index, "--query-series", columns["series_instance_uid"][0], "--group-by", "series", "-k", "2")
    assert code == 0, err and "series_instance_uid" in out.splitlines()[1]
    code, out, err = run(capsys, "search", index, "--query-series", columns["series_instance_uid"][0])
    assert code == 1 and err.startswith("error: ") and "--group-by" in err and err.count("\n") == 1


def test_prior_json_and_table(index, columns, capsys):
    uid = columns["sop_instance_uid"][5]
    code, out, err = run(capsys, "search", index, uid, "--prior", "--json")
    assert code == 0, err
    [result] = json.loads(out)
    assert len(result["studies"]) >= 1 and all(s["relation"] == "earlier" for s in result["studies"])
    assert [s["study_datetime"] for s in result["studies"]] == sorted((s["study_datetime"] for s in result["studies"]), reverse=True)
    code, out, err = run(capsys, "search", index, uid, "--prior")
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == ["date", "relation", "study_instance_uid"]
    code, out, err = run(capsys, "search", index, uid, "--prior", "--group-by", "study")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1


def test_explain_does_not_list_the_query_as_its_own_neighbour(index, columns, capsys):
    uid = columns["sop_instance_uid"][30]
    args = ["explain", index, uid, "-k", "2", "--method", "occlusion", "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert uid not in [n["sop_instance_uid"] for n in json.loads(out)["neighbours"]]
    code, out, err = run(capsys, *args, "--include-self")
    assert code == 0, err
    first = json.loads(out)["neighbours"][0]
    assert first["sop_instance_uid"] == uid and first["score"] == pytest.approx(1.0, abs=1e-5)
