"""Baselines as first-class encoders through the CLI, and `evaluate --baselines`."""

from __future__ import annotations

import json

import pytest

from medcbir.cli.main import main

BASELINE_NAMES = ["thumbnail:8", "thumbnail:16", "thumbnail:32", "random", "classic"]
METRICS = ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy", "n_queries")


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def thumbnail_index(phantom_archive, tmp_path_factory):
    index = tmp_path_factory.mktemp("thumb") / "index"
    assert main(["index", str(phantom_archive), "--encoder", "thumbnail:16", "--out", str(index), "--workers", "1", "--no-progress"]) == 0
    return index


def test_thumbnail_and_random_index_search_and_evaluate(phantom_archive, thumbnail_index, tmp_path, capsys):
    code, out, err = run(capsys, "verify", thumbnail_index, "--json")
    assert code == 0 and json.loads(out)["items"] == 80
    query = sorted((p for p in phantom_archive.rglob("*.dcm")))[12]
    code, out, err = run(capsys, "search", thumbnail_index, query, "-k", "3", "--exclude", "same-patient", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 1 and len(hits[0]["neighbours"]) == 3
    code, out, err = run(capsys, "evaluate", thumbnail_index, "--labels", phantom_archive / "labels.csv", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_queries"] == 80 and 0.2 < result["map_at_k"] <= 1.0

    random_index = tmp_path / "random"
    code, out, err = run(capsys, "index", phantom_archive, "--encoder", "random:3", "--out", random_index, "--workers", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["indexed"] == 80
    code, out, err = run(capsys, "evaluate", random_index, "--labels", phantom_archive / "labels.csv", "--json")
    assert code == 0, err
    assert 0.0 <= json.loads(out)["map_at_k"] <= 1.0
    # The index remembers its built-in encoder by name: search embeds a file query with it.
    code, out, err = run(capsys, "search", random_index, query, "-k", "2", "--json")
    assert code == 0, err


def test_evaluate_with_baselines_has_a_baselines_object(phantom_archive, thumbnail_index, capsys):
    code, out, err = run(capsys, "evaluate", thumbnail_index, "--labels", phantom_archive / "labels.csv", "-k", "5",
                         "--baselines", "--workers", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert sorted(result["baselines"]) == sorted(BASELINE_NAMES)
    for name, row in result["baselines"].items():
        assert all(key in row for key in METRICS), name
        assert row["k"] == 5 and row["exclude"] == "same-patient" and row["n_queries"] == result["n_queries"]
        assert row["encoder"]["name"] == name
    # Oracle: the index was built with thumbnail:16 and the same preprocessing, so its own
    # baseline row must reproduce the main figure exactly.
    same = result["baselines"]["thumbnail:16"]
    for key in ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy"):
        assert same[key] == pytest.approx(result[key], abs=1e-9), key
    # And the table form names every row.
    code, out, err = run(capsys, "evaluate", thumbnail_index, "--labels", phantom_archive / "labels.csv", "--baselines", "--workers", "1")
    assert code == 0, err
    assert "beside the baselines" in out and all(name in out for name in BASELINE_NAMES)


def test_bad_builtin_encoder_name_is_one_line(phantom_archive, tmp_path, capsys):
    code, out, err = run(capsys, "index", phantom_archive, "--encoder", "thumbnail:x", "--out", tmp_path / "bad", "--workers", "1")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("method", ["relax", "occlusion", "gradcam"])
def test_explain_works_on_a_thumbnail_index(phantom_archive, thumbnail_index, tmp_path, capsys, method):
    """Baselines explain like any encoder (the thumbnail is differentiable: no weights, real maps)."""

    query = sorted(phantom_archive.rglob("*.dcm"))[30]
    code, out, err = run(capsys, "explain", thumbnail_index, query, "-k", "2", "--method", method, "--masks", "60",
                         "--exclude", "same-patient", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["method"] == method and len(payload["neighbours"]) == 2
    assert payload["heatmap_shape"][0] == 3
