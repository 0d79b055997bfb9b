"""``medcbir explain`` and ``medcbir explain-eval`` on a real index, in process."""

from __future__ import annotations

import json

import pytest

from medcbir.cli.main import main
from tests.explain.indexes import explain_index, one_torch_thread, query_file  # noqa: F401 - fixtures


def test_explain_writes_report_and_json(explain_index, phantom_archive, tmp_path, capsys):
    query = query_file(phantom_archive)
    report = tmp_path / "out" / "report.html"
    code = main(["explain", str(explain_index), str(query), "-k", "3", "--masks", "80", "--adaptive", "--target-r", "0.9", "--pairwise",
                 "--exclude", "same-patient", "--report", str(report), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    payload = json.loads(out)
    assert payload["method"] == "relax" and len(payload["neighbours"]) == 3 and payload["pairwise"]
    assert payload["heatmap_shape"] == [4, 64, 64]
    assert 0 < payload["n_masks_used"] <= 80
    assert report.is_file() and report.with_suffix(".png").is_file()
    assert payload["report"]["html"] == str(report)
    # same-patient exclusion really applied
    assert all(n["sop_instance_uid"] != payload["query"]["sop_instance_uid"] for n in payload["neighbours"])


def test_explain_prints_neighbours(explain_index, phantom_archive, capsys):
    code = main(["explain", str(explain_index), str(query_file(phantom_archive, 0, 5)), "-k", "2", "--method", "ablation_cam"])
    out = capsys.readouterr().out
    assert code == 0 and "method=ablation_cam" in out and "#2" in out


def test_explain_eval_prints_table_and_writes_json(explain_index, phantom_archive, tmp_path, capsys):
    out_json = tmp_path / "scores.json"
    code = main(["explain-eval", str(explain_index), "--masks-file", str(phantom_archive / "masks.h5"), "--organ", "liver",
                 "--methods", "relax,gradcam", "--n", "2", "--masks", "40", "--angles", "0,90", "--targets", "own", "--json-out", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("liver: 2 images") and "targets: own" in lines[0] and "RRA" in lines[1]
    assert [line.split()[0] for line in lines[2:4]] == ["relax", "gradcam"]
    assert "n/a" in lines[2].split() and any(line.startswith("n/a PIC") for line in lines)
    data = json.loads(out_json.read_text())
    assert set(data["methods"]) == {"relax", "gradcam"} and data["n"] == 2 and data["targets"] == "own"
    assert 0 <= data["methods"]["gradcam"]["rank_accuracy"] <= 1
    assert data["methods"]["gradcam"]["pic"] is None and "pic" in data["not_applicable"]
    # the trivial baselines are in the JSON, and each method's margin over the best of them
    assert set(data["trivial"]) == {"noise", "centre", "intensity", "edges"}
    best = max(t["rank_accuracy"] for t in data["trivial"].values())
    assert data["methods"]["relax"]["margin"]["rank_accuracy"] == pytest.approx(data["methods"]["relax"]["rank_accuracy"] - best)


def test_explain_eval_sanity_with_query_targets(explain_index, phantom_archive, tmp_path, capsys):
    out_json = tmp_path / "scores.json"
    code = main(["explain-eval", str(explain_index), "--masks-file", str(phantom_archive / "masks.h5"), "--methods", "gradcam",
                 "--n", "2", "--angles", "", "--sanity", "--sanity-steps", "2", "--json-out", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "targets: query" in captured.out.splitlines()[0]
    data = json.loads(out_json.read_text())
    assert data["targets"] == "query" and len(data["pairs"]) == 2
    sanity = data["sanity"]
    assert set(sanity) == {"gradcam", "noise", "centre", "intensity", "edges"}
    assert sanity["intensity"]["flagged"]  # a map that ignores the encoder cannot pass
    assert len(sanity["gradcam"]["parameter"]) == 4 and sanity["gradcam"]["data"]["steps"] == 2
    assert "sanity checks" in captured.out
    # kept in the index: reports and the viewer state each method's measured status from it
    from medcbir.explain.status import method_status

    status = method_status(explain_index, "gradcam")
    expected = "flagged" if sanity["gradcam"]["flagged"] else "passed"
    assert status["evaluated"] and status["sanity"] == expected and f"sanity check {expected}" in status["text"]
    margin = data["methods"]["gradcam"]["margin"]["rank_accuracy"]
    assert status["margin"] == pytest.approx(margin) and f"{margin:+.3f}" in status["text"]
    assert method_status(explain_index, "occlusion")["text"].endswith("not evaluated on this index (medcbir explain-eval measures it)")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "{missing}", "{query}"], "does not exist"),
        (["explain", "{index}", "/nonexistent/file.dcm"], "neither a readable file"),
        (["explain-eval", "{index}", "--masks-file", "{masks}", "--organ", "brain"], "organ 'brain'"),
        (["explain-eval", "{index}", "--masks-file", "{masks}", "--methods", "relax,lime"], "unknown explanation method 'lime'"),
        (["explain-eval", "{index}", "--masks-file", "{missing}"], "does not exist"),
        (["explain-eval", "{index}", "--masks-file", "{masks}", "--targets", "own", "--pairwise"], "needs --targets query"),
    ],
)
def test_bad_input_is_one_error_line(explain_index, phantom_archive, tmp_path, capsys, argv, message):
    values = {"index": explain_index, "query": query_file(phantom_archive), "missing": tmp_path / "nope", "masks": phantom_archive / "masks.h5"}
    code = main([a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
