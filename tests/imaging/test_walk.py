"""walk / FolderSource over a real folder of mixed files, with worker processes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medcbir.errors import ArchiveNotFound
from medcbir.imaging import FolderSource, Preprocessing, SkipFile, Source, decode_bytes, load_or_create_key, pseudonym, walk
from medcbir.imaging.walk import auto_workers

from .dicomfiles import PATIENT_ID, ct_dataset, enhanced_ct, hu_phantom, save, sr_dataset


@pytest.fixture(scope="module")
def mixed_archive(tmp_path_factory) -> Path:
    """b/ and a/ subfolders with CT slices, a 2-frame file, an SR, a text file, a truncated file, a DICOMDIR."""
    root = tmp_path_factory.mktemp("mixed")
    for i in range(3):
        save(ct_dataset(hu_phantom(24, seed=i), position=float(i), instance=i + 1), root / "b" / f"slice{i}")
    save(enhanced_ct(np.arange(2 * 6 * 6).reshape(2, 6, 6), [-1024.0, 0.0]), root / "a" / "multi.dcm")
    save(sr_dataset(), root / "a" / "report.dcm")
    (root / "a" / "notes.txt").write_text("not an image\n")
    good = save(ct_dataset(hu_phantom(24, seed=9)), root / "c" / "full.dcm").read_bytes()
    (root / "c" / "cut.dcm").write_bytes(good[:-200])
    (root / "DICOMDIR").write_bytes(b"\0" * 200)
    (root / ".hidden").write_text("ignored")
    return root


EXPECTED_ORDER = ["DICOMDIR", "a/multi.dcm", "a/notes.txt", "a/report.dcm", "b/slice0", "b/slice1", "b/slice2", "c/cut.dcm", "c/full.dcm"]
EXPECTED_SKIPS = {"dicomdir": 1, "not-dicom": 1, "not-an-image": 1, "truncated": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_walk_counts_order_quarantine_and_callback(mixed_archive, tmp_path, workers):
    quarantine = tmp_path / "q.log"
    seen = []
    key = load_or_create_key(tmp_path / "k.key")
    w = walk(mixed_archive, workers=workers, key=key, quarantine=quarantine, on_file=lambda p, n, r: seen.append((p, n, r)))
    decoded = list(w)
    report = w.report
    assert [Path(p).relative_to(mixed_archive).as_posix() for p, _, _ in seen] == EXPECTED_ORDER
    assert report.files == 9 and report.decoded_files == 5 and report.items == 6 == len(decoded)
    assert report.skipped == EXPECTED_SKIPS
    assert report.files == report.decoded_files + sum(report.skipped.values()) + report.passed
    assert report.by_modality == {"CT": 6}
    assert report.by_transfer_syntax == {"1.2.840.10008.1.2.1": 6}
    # stable order: sorted paths, then frame
    keys = [(Path(d.meta.source).relative_to(mixed_archive).as_posix(), d.meta.frame) for d in decoded]
    assert keys == [("a/multi.dcm", 0), ("a/multi.dcm", 1), ("b/slice0", 0), ("b/slice1", 0), ("b/slice2", 0), ("c/full.dcm", 0)]
    assert all(Path(d.meta.source).is_absolute() for d in decoded)
    assert {d.meta.patient_pseudonym for d in decoded} == {pseudonym(PATIENT_ID, key)}
    np.testing.assert_array_equal(decoded[2].image, hu_phantom(24, seed=0).astype(np.float32))
    lines = quarantine.read_text().splitlines()
    assert len(lines) == 4
    reasons = {}
    for line in lines:
        path, reason, detail = line.split("\t")
        assert Path(path).is_absolute() and detail
        reasons[Path(path).name] = reason
    assert reasons == {"DICOMDIR": "dicomdir", "notes.txt": "not-dicom", "report.dcm": "not-an-image", "cut.dcm": "truncated"}
    assert PATIENT_ID not in quarantine.read_text()
    assert report.to_dict()["skipped"] == EXPECTED_SKIPS


def test_walk_with_preprocessing_and_skip_path(mixed_archive):
    prep = Preprocessing(windows=("ct-liver-wide", "ct-bone"), size=32)
    asked = []

    def skip(path: Path) -> bool:
        asked.append(path)
        return path.parent.name == "b"

    w = walk(mixed_archive, preprocessing=prep, workers=2, skip_path=skip)
    decoded = list(w)
    assert len(asked) == 9 and all(isinstance(p, Path) for p in asked)
    assert w.report.passed == 3 and w.report.files == 9 and w.report.items == 3
    assert all(d.image.shape == (2, 32, 32) and d.image.dtype == np.float32 for d in decoded)
    assert all(0.0 <= d.image.min() and d.image.max() <= 1.0 for d in decoded)
    meta, image = decoded[0]  # Decoded unpacks
    assert meta.frame == 0 and image.shape == (2, 32, 32)


def test_walk_of_explicit_paths_and_missing_archive(mixed_archive, tmp_path):
    paths = [mixed_archive / "b" / "slice2", mixed_archive / "b" / "slice0", tmp_path / "gone.dcm"]
    w = walk(paths, workers=1)
    decoded = list(w)
    assert [Path(d.meta.source).name for d in decoded] == ["slice2", "slice0"]  # given order kept
    assert w.report.skipped == {"not-dicom": 1}
    with pytest.raises(ArchiveNotFound):
        walk(tmp_path / "nowhere")
    with pytest.raises(ArchiveNotFound):
        FolderSource(tmp_path / "nowhere")


def test_auto_workers():
    assert auto_workers(0) == max(1, min(len(os.sched_getaffinity(0)), 8))
    assert auto_workers(3) == 3


def test_folder_source_protocol_and_skip_source(mixed_archive, tmp_path):
    source = FolderSource(mixed_archive, workers=2, quarantine=tmp_path / "q.log")
    assert isinstance(source, Source) and source.name == str(mixed_archive)
    first = list(source.decoded(None, b"k" * 32))
    assert source.report.items == len(first) == 6
    done = {d.meta.source for d in first[:3]}
    received = []

    def skip_source(source_str: str) -> bool:
        received.append(source_str)
        return source_str in done

    again = list(source.decoded(None, b"k" * 32, skip_source=skip_source))
    assert all(isinstance(s, str) for s in received) and done <= set(received)
    assert [d.meta.source for d in again] == [d.meta.source for d in first if d.meta.source not in done]
    assert source.report.passed == len(done)


def test_decode_bytes(mixed_archive):
    data = (mixed_archive / "b" / "slice1").read_bytes()
    (decoded,) = decode_bytes(data, "http://pacs/instances/1", None, Preprocessing(size=16))
    assert decoded.meta.source == "http://pacs/instances/1" and decoded.image.shape == (1, 16, 16)
    with pytest.raises(SkipFile) as info:
        decode_bytes(b"hello", "http://pacs/instances/2", None, None)
    assert info.value.reason == "not-dicom"


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def test_hanging_file_times_out_and_the_walk_goes_on(mixed_archive, tmp_path):
    """Opening a FIFO with no writer blocks forever, like a dead network mount."""
    good = [mixed_archive / "b" / f"slice{i}" for i in range(3)]
    paths = [good[0], _fifo(tmp_path, "hang1"), good[1], good[2]]
    t0 = time.monotonic()
    w = walk(paths, workers=2, timeout=2.0, quarantine=tmp_path / "q.log")
    decoded = list(w)
    assert time.monotonic() - t0 < 20
    assert [Path(d.meta.source).name for d in decoded] == ["slice0", "slice1", "slice2"]
    assert w.report.skipped == {"timeout": 1}
    assert "hang1\ttimeout\t" in (tmp_path / "q.log").read_text()


def test_in_process_walk_times_out_a_blocking_file(mixed_archive, tmp_path):
    paths = [_fifo(tmp_path, "hang-in-process"), mixed_archive / "b" / "slice0"]
    t0 = time.monotonic()
    w = walk(paths, workers=1, timeout=1.0)
    decoded = list(w)
    assert time.monotonic() - t0 < 10
    assert len(decoded) == 1 and w.report.skipped == {"timeout": 1}
    import signal

    # the caller's SIGALRM handler and timer are restored (pytest-timeout's, when it runs)
    handler = signal.getsignal(signal.SIGALRM)
    w = walk([mixed_archive / "b" / "slice0"], workers=1, timeout=1.0)
    list(w)
    assert signal.getsignal(signal.SIGALRM) is handler


def test_a_worker_that_dies_costs_only_its_file(mixed_archive, tmp_path):
    """Kill the workers while they block on FIFOs: those files are 'corrupt', the rest decode."""
    import multiprocessing

    good = [mixed_archive / "b" / f"slice{i}" for i in range(3)]
    fifos = [_fifo(tmp_path, "die1"), _fifo(tmp_path, "die2")]
    paths = [fifos[0], fifos[1], *good]

    def killer() -> None:
        deadline = time.monotonic() + 30
        killed = set()
        while time.monotonic() < deadline and len(killed) < 2:
            for child in multiprocessing.active_children():
                try:
                    waiting = Path(f"/proc/{child.pid}/wchan").read_text().strip()
                except OSError:
                    continue
                if child.pid not in killed and ("wait_for_partner" in waiting or "fifo" in waiting):
                    child.kill()
                    killed.add(child.pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    w = walk(paths, workers=2, timeout=60.0)
    decoded = list(w)
    thread.join(timeout=5)
    assert [Path(d.meta.source).name for d in decoded] == ["slice0", "slice1", "slice2"]
    assert w.report.skipped == {"corrupt": 2}
    assert all("died" in detail for _, _, detail in w.report.quarantined)


def test_stopping_early_stops_the_workers(mixed_archive):
    import multiprocessing

    before = {p.pid for p in multiprocessing.active_children()}
    w = walk(mixed_archive, workers=2)
    for _ in w:
        break
    w.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {p.pid for p in multiprocessing.active_children()} - before:
        time.sleep(0.05)
    assert not {p.pid for p in multiprocessing.active_children()} - before
    with pytest.raises(RuntimeError):
        iter(w)  # a walk is iterated once


def test_package_exports_the_contract():
    import medcbir.imaging as imaging

    for name in ("ItemMeta", "Item", "Decoded", "read_dicom", "WINDOWS", "apply_window", "Preprocessing", "load_or_create_key",
                 "pseudonym", "walk", "Walk", "WalkReport", "FolderSource", "Source", "decode_bytes", "SkipFile", "SKIP_REASONS"):
        assert hasattr(imaging, name), name
    assert callable(imaging.make_archive)  # lazily from medcbir.imaging.phantom


def test_workers_killed_at_random_moments_never_break_the_walk(mixed_archive):
    """Chaos: SIGKILL a worker after some files. The walk finishes, in order, and a killed
    worker costs at most the files it was holding (reason ``corrupt``), nothing else."""
    import multiprocessing
    import random

    paths = [mixed_archive / "b" / f"slice{i % 3}" for i in range(30)]
    rnd = random.Random(4)
    victims, reported, counts = [], [], []

    def on_file(path: str, n_items: int, reason: str | None) -> None:
        reported.append(path)
        counts.append(n_items)
        if rnd.random() < 0.25:
            children = multiprocessing.active_children()
            if children:
                victim = rnd.choice(children)
                victim.kill()
                victims.append(victim.pid)

    w = walk(paths, workers=2, timeout=30.0, on_file=on_file)
    decoded = list(w)
    report = w.report
    assert victims, "the test killed nobody"
    assert report.files == 30 == report.decoded_files + sum(report.skipped.values())
    assert set(report.skipped) <= {"corrupt"}
    assert all("died" in detail for _, _, detail in report.quarantined)
    assert report.skipped.get("corrupt", 0) <= len(victims)  # at most the one file a victim was decoding
    assert reported == [str(p) for p in paths]  # every file reported once, in input order
    assert [d.meta.source for d in decoded] == [p for p, n in zip(reported, counts) if n]
