"""Each paper's protocol runs end to end on a tiny phantom in test mode and writes its table,
figures and README; the tables have the paper's rows and columns and our numbers in them."""

from __future__ import annotations

import json

import pytest

from medcbir.reproduce import PAPERS, TEST, paper_module, reproduce
from medcbir.reproduce.table import NOT_IN_PAPER
from tests.threads import one_torch_thread  # noqa: F401 - fixture

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    """3 patients × 10 slices at 64 px, written by the reproductions' own archive step."""
    from medcbir.reproduce.steps import prepare_archive

    path = tmp_path_factory.mktemp("reproduce") / "archive"
    info = prepare_archive(path, TEST, phantom=False)  # missing → a phantom v2 is written
    assert info["generated"] and info["phantom"] and info["patients"] == TEST.patients
    return path


def expected_table(paper: str):
    module = paper_module(paper)
    return module.empty_table(TEST.angles) if paper == "saranchuk" else module.empty_table()


def check_outputs(paper: str, out, result: dict) -> dict:
    for name in ("table.md", "table.json", "README.md", "result.json"):
        assert (out / name).is_file(), name
    assert result["figures"], "no figure"
    for fig in result["figures"]:
        with open(fig, "rb") as fh:
            assert fh.read(8) == PNG, fig
    table = json.loads((out / "table.json").read_text())
    want = expected_table(paper)
    assert [r["row"] for r in table["rows"]] == want.rows + want.extra_rows
    assert [c["key"] for c in table["columns"]] == [c.key for c in want.columns]
    md = (out / "table.md").read_text()
    for row in want.rows + want.extra_rows:
        assert f"| {row} |" in md, row
    for col in want.columns:
        assert f"{col.header}" in md and " paper" in md
    for r in table["rows"]:
        # the paper's cells: its own figures or "not reported", each with its source in the paper; our extra rows are marked as such
        for key, cell in r["paper"].items():
            if not r["in_paper"]:
                assert cell == NOT_IN_PAPER and r["paper_source"][key] is None
                continue
            assert isinstance(cell, str), (r["row"], key, cell)
            source = table["paper_sources"][r["paper_source"][key]]
            assert source["cite"] and source["where"] and source["text"], (r["row"], key, source)
        if r["in_paper"]:
            assert any(v is not None for v in r["ours"].values()), f"no number of ours in row {r['row']!r}"
            for v in r["ours"].values():
                assert v is None or isinstance(v, (int, float)), v
    assert table["reference"] and table["paper_not_reported"] == want.not_reported()
    readme = (out / "README.md").read_text()
    assert "What differs from the paper" in readme and "phantom" in readme and "min of wall time" in readme
    assert "Paper cells:" in readme and want.reference in readme  # which paper and which text the cells were read in
    return table


def test_every_paper_is_registered():
    assert sorted(PAPERS) == ["aggarwal", "eskandari", "saranchuk", "wickstrom", "zhang"]


def test_wickstrom(tiny_archive, tmp_path):
    result = reproduce("wickstrom", tiny_archive, tmp_path / "out", budget=TEST)
    table = check_outputs("wickstrom", tmp_path / "out", result)
    ours = {r["row"]: r["ours"] for r in table["rows"]}
    for row in ours:
        assert 0.0 <= ours[row]["map_at_5"] <= 1.0 and 0.0 <= ours[row]["knn_accuracy"] <= 1.0
    assert (tmp_path / "out" / "relax_query_top5.png").is_file()


def test_zhang(tiny_archive, tmp_path):
    result = reproduce("zhang", tiny_archive, tmp_path / "out", budget=TEST)
    table = check_outputs("zhang", tmp_path / "out", result)
    for r in table["rows"][:3]:
        s = r["ours"]["silhouette"]
        assert s is None or -1.0 <= s <= 1.0
        assert r["ours"]["compactness"] is None or r["ours"]["compactness"] >= 0


def test_saranchuk_through_the_cli(tiny_archive, tmp_path, capsys):
    from medcbir.cli.main import main

    assert main(["reproduce", "saranchuk", str(tiny_archive), "--out", str(tmp_path / "out"), "--test-mode"]) == 0
    assert "Dice 90°" in capsys.readouterr().out
    table = check_outputs("saranchuk", tmp_path / "out", {"figures": [str(tmp_path / "out" / "dice_vs_rotation.png")]})
    dice = table["rows"][0]["ours"]
    assert all(0.0 <= dice[f"dice_{a:g}"] <= 1.0 for a in TEST.angles)
    assert dice["dice_min"] <= dice["dice_mean"]


def test_eskandari(tiny_archive, tmp_path):
    result = reproduce("eskandari", tiny_archive, tmp_path / "out", budget=TEST)
    table = check_outputs("eskandari", tmp_path / "out", result)
    rows = {r["row"]: r["ours"] for r in table["rows"]}
    clustered, ablation = rows["Clustered-CAM (paper's method)"], rows["Ablation-CAM"]
    assert clustered["seconds_per_image"] > 0 and ablation["speedup"] == 1.0
    assert clustered["speedup"] == pytest.approx(ablation["seconds_per_image"] / clustered["seconds_per_image"], rel=1e-6)


def test_aggarwal(tiny_archive, tmp_path):
    result = reproduce("aggarwal", tiny_archive, tmp_path / "out", budget=TEST)
    table = check_outputs("aggarwal", tmp_path / "out", result)
    for r in table["rows"]:
        if r["in_paper"]:
            assert 0.0 <= r["ours"]["auprc"] <= 1.0, r["row"]


def test_an_archive_without_masks_is_one_error_line(tmp_path, capsys):
    from medcbir.cli.main import main

    (tmp_path / "plain").mkdir()
    assert main(["reproduce", "wickstrom", str(tmp_path / "plain"), "--out", str(tmp_path / "out"), "--test-mode"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [err[-1]] and "labels.csv" in errors[0] and "masks.h5" in errors[0], err
    assert "Traceback" not in "\n".join(err)
