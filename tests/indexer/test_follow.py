"""The index follows its folder archive: files deleted, replaced or added between two runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medcbir.indexer import IndexStore, index_archive


def live_items(index: Path) -> dict[tuple[str, int], np.ndarray]:
    """(sop_instance_uid, frame) → embedding of every live item (a live key twice fails)."""
    with IndexStore.open(index) as store:
        ids = store.ids[store.live_mask]
        sops, frames = store.columns["sop_instance_uid"][ids], store.columns["frame"][ids]
        emb = store.embeddings(ids)
    out = {}
    for sop, frame, e in zip(sops.tolist(), frames.tolist(), emb):
        assert (sop, int(frame)) not in out
        out[(sop, int(frame))] = e
    return out


def answers(index: Path, queries: list[str]) -> list[list[tuple[float, str]]]:
    """Each query's neighbours as (score, SOP UID), ties (identical images) in UID order."""
    from medcbir.engine import Engine

    with Engine.open(index) as engine:
        return [sorted((-round(n.score, 4), n.meta["sop_instance_uid"]) for n in hits)
                for hits in engine.search(queries, k=5, include_self=True)]


def later(path: Path, seconds: float = 10.0) -> None:
    """Move a file's mtime forward, as a file written later has (coarse file-system clocks)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


@pytest.fixture(scope="module")
def donors(tmp_path_factory) -> list[Path]:
    """DICOM files of another phantom (other patients, other UIDs) to replace and add files with."""
    from medcbir.imaging.phantom import make_archive

    out = tmp_path_factory.mktemp("donor") / "archive"
    make_archive(out, patients=2, slices=3, seed=21, size=64)
    return sorted(out.rglob("*.dcm"))


def edit(archive: Path, donors: list[Path]) -> None:
    """Between two runs: 3 files deleted, 2 replaced by other images (other UIDs), 1 rewritten
    with other pixels under the same SOP UID, 3 added."""
    files = sorted(archive.rglob("*.dcm"))
    for gone in files[:3]:
        gone.unlink()
    for target, donor in zip(files[3:5], donors[:2]):
        shutil.copyfile(donor, target)
        later(target)
    ds = pydicom.dcmread(files[5])
    ds.PixelData = pydicom.dcmread(files[6]).PixelData
    ds.save_as(files[5])
    later(files[5])
    added = archive / "added"
    added.mkdir()
    for donor in donors[2:5]:
        shutil.copyfile(donor, added / donor.name)


def edited_archive(tmp_path: Path, encoder, donors: list[Path]) -> tuple[Path, Path]:
    """(archive, index of it as it was before :func:`edit`)."""
    from medcbir.imaging.phantom import make_archive

    archive, index = tmp_path / "archive", tmp_path / "index"
    make_archive(archive, patients=3, slices=4, seed=3, size=64, compress=False)
    assert index_archive(archive, index, encoder, shard_size=5, progress=False, workers=1).indexed == 12
    edit(archive, donors)
    return archive, index


def test_an_edited_folder_ends_as_a_fresh_index_of_it(tmp_path, encoder, donors):
    archive, index = edited_archive(tmp_path, encoder, donors)
    second = index_archive(archive, index, encoder, shard_size=5, progress=False, workers=1)
    fresh = tmp_path / "fresh"
    index_archive(archive, fresh, encoder, shard_size=5, progress=False, workers=1)
    got, want = live_items(index), live_items(fresh)
    assert got.keys() == want.keys() and len(got) == 12
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-5
    queries = [f"{sop}:{frame}" for sop, frame in sorted(want)[::3]]
    assert answers(index, queries) == answers(fresh, queries)
    assert (second.gone_sources, second.gone_items, second.changed_sources, second.changed_items) == (3, 3, 3, 3)
    assert second.indexed == 6 and second.live_items == 12

    third = index_archive(archive, index, encoder, shard_size=5, progress=False, workers=1)
    assert (third.indexed, third.gone_items, third.changed_items, third.live_items) == (0, 0, 0, 12)


def test_verify_sources_reports_the_edits_and_changes_nothing(tmp_path, encoder, donors):
    from medcbir.indexer.follow import verify_sources

    archive, index = edited_archive(tmp_path, encoder, donors)
    committed = (index / "manifest.json").read_bytes()
    found = verify_sources(index)
    assert (len(found.missing), len(found.changed), found.missing_items, found.changed_items, found.checked) == (3, 3, 3, 3, 12)
    assert not found.ok and (index / "manifest.json").read_bytes() == committed
    index_archive(archive, index, encoder, shard_size=5, progress=False, workers=1)
    assert verify_sources(index).ok


def test_a_deleted_series_stays_deleted_until_its_files_change(tmp_path, encoder):
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import delete

    archive, index = tmp_path / "archive", tmp_path / "index"
    make_archive(archive, patients=2, slices=3, seed=4, size=64)
    index_archive(archive, index, encoder, progress=False, workers=1)
    with IndexStore.open(index) as store:
        series = sorted(set(store.columns["series_instance_uid"]))[0]
    assert delete(index, series=[series]) == 3
    again = index_archive(archive, index, encoder, progress=False, workers=1)
    assert again.indexed == 0 and len(live_items(index)) == 3  # `delete` is not undone by the next run

    make_archive(archive, patients=2, slices=3, seed=4, size=64)  # the same archive written again
    for path in archive.rglob("*.dcm"):
        later(path)
    rewritten = index_archive(archive, index, encoder, progress=False, workers=1)
    assert rewritten.indexed == 6 and len(live_items(index)) == 6 and rewritten.changed_items == 3


def test_the_quarantine_log_keeps_one_entry_per_file(tmp_path, encoder):
    from medcbir.imaging.phantom import make_archive

    archive, index = tmp_path / "archive", tmp_path / "index"
    make_archive(archive, patients=1, slices=2, seed=4, size=64)
    (archive / "notes.txt").write_text("not DICOM")
    broken = archive / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    for _ in range(3):
        index_archive(archive, index, encoder, progress=False, workers=1)
    lines = (index / "quarantine.log").read_text().splitlines()
    assert len(lines) == 8  # 6 ground-truth files, notes and broken, once each

    from medcbir.indexer.quarantine import read_log

    entries = read_log(index)
    assert len(entries) == 8
    assert all(line.startswith("sealed:") for line in lines)
    assert sorted(e.reason for e in entries) == ["no-pixel-data"] + ["not-dicom"] * 7

    broken.unlink()  # gone: its entry goes; a file fixed or indexed is no longer quarantined
    (archive / "notes.txt").unlink()
    index_archive(archive, index, encoder, progress=False, workers=1)
    assert len(read_log(index)) == 6


@pytest.mark.orthanc
def test_a_dicomweb_index_follows_its_server(dicomweb_server, encoder_path, tmp_path, capsys):
    import requests

    from medcbir.cli.main import main
    from medcbir.pacs.dicomweb import DicomwebSource

    server, files = dicomweb_server
    url, index, untouched = f"dicomweb+{server.url}/dicom-web", tmp_path / "index", tmp_path / "untouched"
    for out in (index, untouched):
        assert index_archive(DicomwebSource(url, workers=1), out, str(encoder_path), progress=False).indexed == len(files)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    [orthanc_id] = requests.post(f"{server.url}/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}}, timeout=30).json()
    requests.delete(f"{server.url}/instances/{orthanc_id}", timeout=30).raise_for_status()

    second = index_archive(DicomwebSource(url, workers=1), index, str(encoder_path), progress=False)
    assert second.indexed == 0 and len(live_items(index)) == len(files) - 1
    assert uid not in {sop for sop, _ in live_items(index)}
    assert second.gone_items == 1 and main(["verify", str(index), "--sources"]) == 0
    assert main(["verify", str(untouched), "--sources"]) == 1  # it lists the server, changes nothing
    assert f"{len(files)} source(s) checked: 1 missing (1 item(s))" in capsys.readouterr().out
