"""``medcbir scan``: JSON fields and counts on a real folder, text output, one-line errors, no PHI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medcbir.cli.main import main
from tests.imaging.dicomfiles import PATIENT_ID, PATIENT_NAME, ct_dataset, hu_phantom, save, sr_dataset

JSON_KEYS = {"archive", "files", "items", "decoded_files", "passed", "by_modality", "by_transfer_syntax", "skipped", "quarantined", "elapsed_s"}


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> Path:
    from pydicom.uid import RLELossless

    root = tmp_path_factory.mktemp("scan") / "archive"
    for i in range(3):
        save(ct_dataset(hu_phantom(16, seed=i), instance=i + 1), root / "series1" / f"{i:03d}.dcm")
    save(ct_dataset(hu_phantom(16, seed=7), tsyntax=RLELossless), root / "series2" / "rle.dcm")
    save(sr_dataset(), root / "series2" / "report.dcm")
    (root / "readme.txt").write_text(f"contact {PATIENT_NAME}\n")
    return root


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_json_has_documented_fields_and_counts(capsys, small_archive, tmp_path):
    quarantine = tmp_path / "q.log"
    code, out, err = run(capsys, "scan", small_archive, "--json", "--workers", "2", "--quarantine", quarantine)
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == JSON_KEYS
    assert data["archive"] == str(small_archive)
    assert (data["files"], data["items"], data["decoded_files"], data["quarantined"]) == (6, 4, 4, 2)
    assert data["by_modality"] == {"CT": 4}
    assert data["by_transfer_syntax"] == {
        "1.2.840.10008.1.2.1": {"name": "Explicit VR Little Endian", "items": 3},
        "1.2.840.10008.1.2.5": {"name": "RLE Lossless", "items": 1},
    }
    assert data["skipped"] == {"not-an-image": 1, "not-dicom": 1}
    assert isinstance(data["elapsed_s"], float) and data["elapsed_s"] >= 0
    log = quarantine.read_text()
    assert len(log.splitlines()) == 2
    for text in (out, err, log):
        assert PATIENT_ID not in text


def test_scan_text_output(capsys, small_archive):
    code, out, err = run(capsys, "scan", small_archive, "--workers", "1")
    assert code == 0, err
    assert "6 files" in out and "4 items" in out
    assert "RLE Lossless" in out and "not-an-image" in out and "CT" in out
    assert PATIENT_ID not in out


def test_scan_missing_archive_is_one_line_error(tmp_path):
    medcbir = Path(sys.executable).parent / "medcbir"
    proc = subprocess.run([str(medcbir), "scan", str(tmp_path / "missing"), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: archive not found")


def test_scan_of_the_phantom_archive(capsys, phantom_archive):
    code, out, err = run(capsys, "scan", phantom_archive, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["items"] == 4 * 20 and data["by_modality"] == {"CT": 80}
    assert data["decoded_files"] == 80
    assert set(data["skipped"]) <= {"not-dicom"}  # labels.csv and masks.h5 are not images
