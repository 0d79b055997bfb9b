"""No patient identifier leaks from an archive whose folders are named after the patients.

Hospitals often file images as ``<PatientID>_<PatientName>/...``. The index keeps a keyed
pseudonym of the patient, never the PatientID; that is worth nothing if the file path (which
carries the PatientID) is stored or printed beside it. This runs the commands a user runs
(index, search --json --redact, explain --report --json --redact, evaluate) on such an archive
and scans every file they write (HDF5 shards read dataset by dataset and byte by byte, the
manifest, the quarantine log, the HTML and PNG reports) and everything they print.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from medcbir.cli.main import main

# Distinctive values: they cannot appear by chance in UIDs, hashes or base64.
PATIENTS = [("MRN8841207", "Kowalczyk^Agnieszka"), ("MRN5530918", "Fitzgerald^Bartholomew")]


def forbidden() -> list[str]:
    words = []
    for pid, name in PATIENTS:
        family, given = name.split("^")
        words += [pid, name, name.replace("^", " "), family, given]
    return words


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A phantom archive re-filed as ``<PatientID>_<PatientName>/<series>/<file>.dcm`` with the
    DICOM PatientID/PatientName set to the same values, plus a non-DICOM note per patient."""
    from medcbir.imaging.phantom import make_archive

    tmp = tmp_path_factory.mktemp("privacy")
    phantom = tmp / "phantom"
    make_archive(phantom, patients=2, slices=6, seed=5, size=32)
    out = tmp / "archive"
    out.mkdir()
    shutil.copy(phantom / "labels.csv", tmp / "labels.csv")
    folders = sorted(p for p in phantom.iterdir() if p.is_dir())
    assert len(folders) == len(PATIENTS)
    for folder, (pid, name) in zip(folders, PATIENTS):
        target = out / f"{pid}_{name}"
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.PatientName = pid, name
            dest = target / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dest, enforce_file_format=True)
        (target / f"notes-{pid}.txt").write_text("not a DICOM file\n")  # goes to the quarantine log
    return out


@pytest.fixture(scope="module")
def encoder32(tmp_path_factory) -> Path:
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    return save_checkpoint(tmp_path_factory.mktemp("enc") / "enc32.pt",
                           new_encoder_module("resnet18", Preprocessing(windows=("ct-liver-wide",), size=32), seed=1))


def run(capsys, *args) -> str:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out + err


def hdf5_text(path: Path) -> str:
    """Every dataset's values and every attribute of an HDF5 file, as text."""
    parts: list[str] = []

    def visit(name, obj):
        parts.append(name)
        parts.extend(f"{k}={v!r}" for k, v in obj.attrs.items())
        if isinstance(obj, h5py.Dataset):
            data = obj[...]
            if data.dtype.kind in "SOU":
                parts.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.ravel(data))

    with h5py.File(path, "r") as f:
        parts.extend(f"{k}={v!r}" for k, v in f.attrs.items())
        f.visititems(visit)
    return "\n".join(parts)


def leaks(text: str) -> list[str]:
    return [word for word in forbidden() if word.lower() in text.lower()]


def test_no_output_names_the_patient(archive, encoder32, tmp_path, capsys):
    from PIL import Image

    index, reports = tmp_path / "index", tmp_path / "reports"
    query = next(archive.glob(f"{PATIENTS[0][0]}_*/**/*.dcm"))
    printed = [
        run(capsys, "index", archive, "--encoder", encoder32, "--out", index, "--workers", "1", "--json", "--no-progress"),
        run(capsys, "index", archive, "--encoder", encoder32, "--out", index, "--workers", "1", "--json", "--no-progress"),
        run(capsys, "search", index, query, "-k", "4", "--json", "--redact"),
        run(capsys, "search", index, query, "-k", "4", "--redact"),
        run(capsys, "explain", index, query, "-k", "3", "--masks", "40", "--report", reports / "report.html", "--json", "--redact"),
        run(capsys, "evaluate", index, "--labels", archive.parent / "labels.csv", "-k", "3", "--json"),
    ]
    summary = json.loads(printed[0].strip().splitlines()[-1])
    assert summary["indexed"] == 12 and summary["skipped"] == {"not-dicom": 2}
    assert json.loads(printed[1].strip().splitlines()[-1])["indexed"] == 0  # resumed by sealed source
    for text in printed:
        assert not leaks(text), (leaks(text), text[:400])

    written = sorted(p for p in [*index.rglob("*"), *reports.rglob("*")] if p.is_file())
    names = {p.name for p in written}
    assert {"manifest.json", "quarantine.log", "report.html", "report.png"} <= names
    assert any(n.endswith(".h5") for n in names)
    for path in written:
        assert not leaks(path.name)
        raw = path.read_bytes()
        assert not [w for w in forbidden() if w.encode() in raw], path
        if path.suffix == ".h5":
            assert not leaks(hdf5_text(path)), path
        if path.suffix == ".png":
            assert not leaks(repr(Image.open(path).info)), path
    quarantine = (index / "quarantine.log").read_text().splitlines()
    assert len(set(quarantine)) == 2  # the two notes (each index run logs them again)
    assert all(line.startswith("sealed:") and "\tnot-dicom\t" in line for line in quarantine)


def test_the_local_user_still_gets_paths_and_explain_reads_them(archive, encoder32, tmp_path, capsys):
    """Without --redact the CLI shows the absolute path (opened with the archive key), and the
    index, moved to another folder with its key, still finds and explains its files."""
    index = tmp_path / "index"
    run(capsys, "index", archive, "--encoder", encoder32, "--out", index, "--workers", "1", "--json", "--no-progress")
    moved = tmp_path / "elsewhere" / "index"
    shutil.move(index, moved)
    query = next(archive.glob(f"{PATIENTS[1][0]}_*/**/*.dcm"))
    [entry] = json.loads(run(capsys, "search", moved, query, "-k", "3", "--json"))
    sources = [n["source"] for n in entry["neighbours"]]
    assert all(Path(s).is_absolute() and Path(s).is_file() and Path(s).is_relative_to(archive) for s in sources)
    assert entry["query"] == str(query)
    explained = json.loads(run(capsys, "explain", moved, query, "-k", "2", "--masks", "20", "--json"))
    assert len(explained["neighbours"]) == 2 and explained["query"]["label"] == str(query)
    # Without the key, the records open to nothing: explain cannot read a neighbour.
    (moved / "pseudonym.key").unlink()
    code = main(["explain", str(moved), str(query), "-k", "2", "--masks", "20"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and not leaks(err)
