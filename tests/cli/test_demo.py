"""The demo is the whole flow: phantom → scan → train (adaptation) → ONNX → index → search → evaluate → region match → explain → report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pydicom
import pytest

from tests.region_html import region_section


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # a relative OUT, run from another folder: exactly how `make demo` calls it
    proc = subprocess.run(
        [sys.executable, "-m", "medcbir", "demo", "demo", "--patients", "3", "--slices", "10",
         "--size", "32", "--masks", "100", "-k", "3", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # with --json the stage lines go to stderr and stdout is one JSON summary
    text = proc.stderr
    summary = json.loads(proc.stdout)
    for stage in range(1, 10):
        assert f"== {stage}/9" in text
    # the archive, the encoder in both forms, the index and the report all exist for real
    assert len(list((out / "archive").rglob("*.dcm"))) == 30
    assert (out / "encoder.pt").stat().st_size > 0 and (out / "encoder.onnx").stat().st_size > 0
    assert (out / "index" / "manifest.json").exists()
    with h5py.File(next((out / "index").glob("shard-*.h5")), "r") as shard:
        assert shard["embeddings"].shape[0] == 30
    # three neighbours printed, from other patients, with scores in [-1, 1]
    scores = [float(s) for s in re.findall(r"#\d score=(-?[0-9.]+)", text)]
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0001 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert re.search(r"MAP@3=0\.\d{3}", text) or "MAP@3=1.000" in text
    # the kept stage and why, its scores beside the start's, and its figure beside the start and the baselines
    assert re.search(r"\n   kept \S+: ", text) and "agreement@5" in text
    assert re.search(r"kept: \S+ +MAP@3=[01]\.\d{3}", text) and re.search(r"default \(start\) +MAP@3=[01]\.\d{3}", text)
    assert re.search(r"thumbnail:16 +MAP@3=[01]\.\d{3}", text) and re.search(r"random +MAP@3=[01]\.\d{3}", text)
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 8  # 4 images + 4 heatmaps (+ colour bar)
    assert (out / "report.png").stat().st_size > 1000
    # The report names images by their UIDs, never the patient: no PatientID or PatientName of
    # any phantom patient in the HTML, the PNG panel or the index's shards and manifest.
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((out / "archive").rglob("*.dcm"))]
    identities = {str(ds.PatientID) for ds in headers} | {str(ds.PatientName) for ds in headers}
    assert len(identities) == 6  # 3 ids + 3 names
    outputs = [out / "report.html", out / "report.png", out / "index" / "manifest.json", *(out / "index").glob("shard-*.h5")]
    for path in outputs:
        raw = path.read_bytes()
        assert not [who for who in identities if who.encode() in raw], path
    query_sops = re.findall(r"1\.2\.826\.0\.1\.3680043\.8\.498\.\d+", html)
    assert len(set(query_sops) & {str(ds.SOPInstanceUID) for ds in headers}) >= 4  # query + 3 neighbours, by UID
    # the JSON summary says what the demo did, and agrees with the files and the printed lines
    assert summary["archive"]["files"] == 30 and Path(summary["archive"]["path"]) == (out / "archive").resolve()
    assert summary["index"]["items"] == 30 and (Path(summary["index"]["path"]) / "manifest.json").exists()
    assert Path(summary["encoder"]["onnx"]).stat().st_size > 0 and summary["encoder"]["kept"] in text
    query_ds = pydicom.dcmread(summary["query"]["file"], stop_before_pixels=True)
    assert summary["query"]["sop_instance_uid"] == str(query_ds.SOPInstanceUID)
    assert [n["score"] for n in summary["neighbours"]] == pytest.approx(scores, abs=5.1e-4)  # printed with 3 decimals
    assert [n["rank"] for n in summary["neighbours"]] == [1, 2, 3]
    patient = {str(ds.SOPInstanceUID): str(ds.PatientID) for ds in headers}
    assert all(patient[n["sop_instance_uid"]] != str(query_ds.PatientID) for n in summary["neighbours"])
    assert f"MAP@3={summary['evaluation']['kept']['map_at_k']:.3f}" in text
    assert set(summary["evaluation"]["baselines"]) == {"default (start)", "thumbnail:16", "random"}
    assert summary["explanation"]["method"] == "relax" and summary["explanation"]["n_masks"] == 100
    assert Path(summary["report"]) == (out / "report.html").resolve() and Path(summary["explanation"]["panel"]).exists()
    # the region query: a box on a structure of the query slice (no lesion list in this archive: a proposed region),
    # its neighbours from other patients, each with its matched box, printed and in the report
    region = summary["region"]
    assert "proposed region" in region["chosen"] and len(region["box"]) == 4 and region["box"][2] > 0 and region["box"][3] > 0
    assert [n["rank"] for n in region["neighbours"]] == [1, 2, 3]
    assert all(patient[n["sop_instance_uid"]] != str(query_ds.PatientID) for n in region["neighbours"])
    printed = re.findall(r"#(\d) region score=([0-9.]+) matched=(\d+),(\d+),(\d+),(\d+)", text)
    assert [(int(r), [int(v) for v in box]) for r, _, *box in printed] == [(n["rank"], n["region"]) for n in region["neighbours"]]
    assert "region-match RELAX: not evaluated on this index" in text and region["status"] in text
    section = region_section(html)
    assert section.sections == 1 and "why each region matched" in section.heading
    assert section.paragraphs["status"] == [region["status"]] and section.paragraphs["caveat"]
    query_fig, *neighbour_figs = section.figures
    assert query_fig["class"] == "query" and f"box {','.join(map(str, region['box']))} (x, y, w, h)" in query_fig["lines"]
    assert len(neighbour_figs) == 3 and all(f["class"] == "neighbour" for f in neighbour_figs)
    for fig, n in zip(neighbour_figs, region["neighbours"]):
        assert fig["lines"][0] == f"#{n['rank']}" and f"matched region {','.join(map(str, n['region']))}" in fig["lines"]
        assert fig["images"] and fig["images"][0].startswith("data:image/png;base64,")
        assert any(n["sop_instance_uid"][-27:] in line for line in fig["lines"])  # named by its UID
