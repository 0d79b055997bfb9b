"""``medcbir phantom``: writes the archive it reports, one-line errors for bad options."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pydicom

from medcbir.cli.main import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_phantom_writes_and_summarises(capsys, tmp_path):
    out = tmp_path / "archive"
    code, stdout, err = run(capsys, "phantom", out, "--patients", 2, "--slices", 10, "--seed", 4, "--size", 64)
    assert code == 0, err
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 20
    assert "20 slices (2 patients × 10, 64 px)" in stdout
    assert re.search(r"= \d+ slices/s", stdout)
    # The printed per-label counts are the labels.csv counts.
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    printed = dict(re.findall(r"(thorax|liver-dome|liver-kidney|kidney|pelvis) (\d+)", stdout.split("labels:")[1].splitlines()[0]))
    assert {k: int(v) for k, v in printed.items()} == {
        label: sum(r["label"] == label for r in rows) for label in ("thorax", "liver-dome", "liver-kidney", "kidney", "pelvis")}
    assert str(out / "labels.csv") in stdout and str(out / "masks.h5") in stdout
    syntaxes = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID.name for f in files}
    line = stdout.split("transfer syntaxes: ")[1].splitlines()[0]
    assert syntaxes == {part.rsplit(" ", 1)[0] for part in line.split(", ")}
    assert int(pydicom.dcmread(files[0], stop_before_pixels=True).Rows) == 64


def test_no_compress_flag(capsys, tmp_path):
    out = tmp_path / "plain"
    code, stdout, err = run(capsys, "phantom", out, "--patients", 4, "--slices", 1, "--size", 32, "--no-compress")
    assert code == 0, err
    names = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID.name for f in out.rglob("*.dcm")}
    assert names == {"Explicit VR Little Endian", "Implicit VR Little Endian"}
    assert "RLE" not in stdout and "JPEG" not in stdout


def test_bad_options_give_one_line_and_exit_2(capsys, tmp_path):
    code, stdout, err = run(capsys, "phantom", tmp_path / "x", "--patients", 0)
    assert code == 1 and err.strip().count("\n") == 0 and err.startswith("error: ") and "patients" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    code, stdout, err = run(capsys, "phantom", tmp_path / "busy", "--slices", 2, "--size", 32)
    assert code == 1 and "not empty" in err and err.strip().count("\n") == 0
    code, stdout, err = run(capsys, "phantom", tmp_path / "y", "--size", 4)
    assert code == 1 and "size" in err


def test_console_script_runs(tmp_path):
    """The installed entry point (a real subprocess, as a user runs it)."""
    medcbir = Path(sys.executable).parent / "medcbir"
    result = subprocess.run([str(medcbir), "phantom", str(tmp_path / "a"), "--patients", "1", "--slices", "2",
                             "--size", "32"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 slices" in result.stdout
    assert len(list((tmp_path / "a").rglob("*.dcm"))) == 2


def test_studies_per_patient_option(capsys, tmp_path):
    out = tmp_path / "exams"
    code, stdout, err = run(capsys, "phantom", out, "--patients", 2, "--slices", 3, "--size", 32,
                            "--studies-per-patient", 2)
    assert code == 0, err
    assert "12 slices (2 patients × 2 studies × 3, 32 px)" in stdout
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in out.rglob("*.dcm")}
    assert len(studies) == 4 and str(out / "slices.csv") in stdout
    code, stdout, err = run(capsys, "phantom", tmp_path / "bad", "--studies-per-patient", 0)
    assert code == 1 and err.startswith("error: ") and "studies-per-patient" in err


def test_simple_modality_and_override_options(capsys, tmp_path):
    import json

    code, stdout, err = run(capsys, "phantom", tmp_path / "simple", "--patients", 1, "--slices", 2, "--size", 32, "--simple")
    assert code == 0, err
    assert not (tmp_path / "simple" / "labels-liver.csv").exists() and "labels-liver" not in stdout
    code, stdout, err = run(capsys, "phantom", tmp_path / "v2", "--patients", 2, "--slices", 2, "--size", 32,
                            "--modality", "MR", "--override", "pixel_spacing=0.8", "--override", "offset_mm=[5,-5]",
                            "--override", "phase=arterial")
    assert code == 0, err
    assert str(tmp_path / "v2" / "labels-liver.csv") in stdout
    description = json.loads((tmp_path / "v2" / "phantom.json").read_text())
    for patient in description["patients"]:
        assert patient["nuisances"]["pixel_spacing"] == 0.8 and patient["nuisances"]["offset_mm"] == [5, -5]
        assert patient["nuisances"]["phase"] == "arterial" and patient["modality"] == "MR"
    assert {pydicom.dcmread(f, stop_before_pixels=True).Modality for f in (tmp_path / "v2").rglob("*.dcm")} == {"MR"}
    for bad, message in ((["--override", "nope"], "NAME=VALUE"), (["--override", "speed=3"], "unknown phantom override"),
                         (["--simple", "--modality", "MR"], "v2")):
        code, stdout, err = run(capsys, "phantom", tmp_path / "bad", "--size", 32, *bad)
        assert code == 1 and err.startswith("error: ") and message in err and err.strip().count("\n") == 0
