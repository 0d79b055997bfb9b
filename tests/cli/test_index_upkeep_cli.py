"""`medcbir index | verify | quarantine | phantom` keeping an index true to its archive, as a user runs them:
no patient-named folder in any index file, a flipped byte costing one shard until the next run,
sources followed, the quarantine log readable."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from medcbir.cli.main import main
from tests.indexer.conftest import make_encoder

FOLDER = "PHANTOM-0-000_PHANTOM^CASE000"


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("upkeep-enc") / "enc64.pt", size=64)


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def phantom(capsys, out: Path, *extra) -> None:
    code, _, err = run(capsys, "phantom", out, "--patients", 3, "--slices", 4, "--size", 32, *extra)
    assert code == 0, err


def index(capsys, archive: Path, out: Path, enc: Path, *extra) -> dict:
    code, stdout, err = run(capsys, "index", archive, "--encoder", enc, "--out", out, "--workers", 1, "--json", *extra)
    assert code == 0, err
    return json.loads(stdout.strip().splitlines()[-1])


def live_keys(index_dir: Path) -> dict[tuple[str, int], np.ndarray]:
    from medcbir.indexer import IndexStore

    with IndexStore.open(index_dir) as store:
        ids = store.ids[store.live_mask]
        return {(s, int(f)): e for s, f, e in zip(store.columns["sop_instance_uid"][ids].tolist(),
                                                   store.columns["frame"][ids].tolist(), store.embeddings(ids))}


def flip_embedding_byte(shard: Path) -> None:
    """One flipped bit inside the shard's embeddings (where a random disk error most likely lands)."""
    with h5py.File(shard, "r") as f:
        offset = f["embeddings"].id.get_offset() + 100
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x10
    shard.write_bytes(bytes(data))


def assert_names_nothing(ix: Path, tmp_path: Path) -> None:
    """No byte of any file of the index (shards, manifests, logs, keys...) names the folders."""
    files = [p for p in ix.rglob("*") if p.is_file()]
    assert {"manifest.json", "quarantine.log"} <= {p.name for p in files}
    for needle in (FOLDER, "PHANTOM-0-000", "CASE000", str(tmp_path)):
        assert not [p.name for p in files if needle.encode() in p.read_bytes()], needle


def test_no_index_file_names_the_patient_folder(tmp_path, enc, capsys):
    archive, ix = tmp_path / FOLDER, tmp_path / "index"
    phantom(capsys, archive)
    (archive / "notes.txt").write_text("not DICOM\n")  # quarantined
    index(capsys, archive, ix, enc, "--shard-size", 4)
    next(archive.rglob("*.dcm")).unlink()  # a source gone: followed, tombstoned, compacted
    index(capsys, archive, ix, enc, "--shard-size", 4)
    assert_names_nothing(ix, tmp_path)
    assert run(capsys, "verify", ix, "--sources", "--repair")[0] == 0
    assert run(capsys, "quarantine", ix, "--json")[0] == 0
    assert_names_nothing(ix, tmp_path)
    # The local user (with the key) still gets the files' paths.
    query = next(archive.rglob("*.dcm"))
    code, out, err = run(capsys, "search", ix, query, "-k", "2", "--json")
    assert code == 0, err
    assert all(Path(n["source"]).is_file() and Path(n["source"]).is_relative_to(archive) for n in json.loads(out)[0]["neighbours"])


def test_an_index_that_recorded_its_root_plain_still_opens_and_gets_it_sealed(tmp_path, enc, capsys):
    archive, ix = tmp_path / FOLDER, tmp_path / "index"
    phantom(capsys, archive)
    index(capsys, archive, ix, enc)
    manifest = json.loads((ix / "manifest.json").read_text())
    (ix / "manifest.json").write_text(json.dumps({**manifest, "archive_root": str(archive)}))  # as older versions wrote it
    query = next(archive.rglob("*.dcm"))
    code, out, err = run(capsys, "search", ix, query, "-k", "2", "--json")
    assert code == 0 and all(Path(n["source"]).is_file() for n in json.loads(out)[0]["neighbours"]), err
    assert index(capsys, archive, ix, enc)["indexed"] == 0  # the sealed sources still match
    assert FOLDER not in (ix / "manifest.json").read_text()
    code, out, err = run(capsys, "search", ix, query, "-k", "2", "--json")
    assert code == 0 and all(Path(n["source"]).is_file() for n in json.loads(out)[0]["neighbours"]), err


def test_a_repair_does_not_count_deleted_items_as_dropped(tmp_path, enc, capsys):
    archive, ix = tmp_path / "archive", tmp_path / "index"
    phantom(capsys, archive)
    index(capsys, archive, ix, enc, "--shard-size", 4)
    with h5py.File(ix / "shard-000003.h5", "r") as f:
        sop = f["meta/sop_instance_uid"][0].decode()
    assert run(capsys, "delete", ix, "--sop", sop)[0] == 0
    flip_embedding_byte(ix / "shard-000003.h5")
    code, out, err = run(capsys, "verify", ix, "--repair", "--json")
    assert code == 0 and json.loads(out)["repair"]["dropped_items"] == 3 and json.loads(out)["deleted"] == 0, out + err


def test_a_flipped_byte_costs_only_its_shard_until_the_next_index_run(tmp_path, enc, capsys):
    archive, ix = tmp_path / "archive", tmp_path / "index"
    phantom(capsys, archive)
    assert index(capsys, archive, ix, enc, "--shard-size", 4)["total_items"] == 12
    before = live_keys(ix)
    flip_embedding_byte(ix / "shard-000002.h5")

    code, _, err = run(capsys, "verify", ix)
    assert code == 1 and err.startswith("error: shard-000002.h5: checksum mismatch")
    # Adding to a damaged index would claim items searches cannot reach: refused, one line.
    code, out, err = run(capsys, "index", archive, "--encoder", enc, "--out", ix, "--workers", 1, "--no-progress")
    assert code == 1 and err.count("\n") == 1 and "shard-000002.h5" in err and "verify --repair" in err

    code, out, err = run(capsys, "verify", ix, "--repair")
    assert code == 0, err
    assert out.startswith("repaired: dropped 4 item(s) of damaged shard-000002.h5")
    assert "ok: 8 item(s) in 2 shard(s)" in out and "4 item(s) dropped by a repair wait" in out
    uid = next(iter(before))[0]
    code, out, err = run(capsys, "search", ix, uid, "-k", 50, "--json", "--per-series", 0)
    assert code == 0 and len(json.loads(out)[0]["neighbours"]) == 7, err  # the 8 left, without the query

    summary = index(capsys, archive, ix, enc, "--shard-size", 4)
    assert (summary["indexed"], summary["dropped_items"], summary["reembedded"], summary["live_items"]) == (4, 4, 4, 12)
    after = live_keys(ix)
    assert after.keys() == before.keys()
    assert max(float(np.abs(after[k] - before[k]).max()) for k in before) <= 1e-5
    code, out, _ = run(capsys, "verify", ix, "--json")
    assert code == 0 and json.loads(out)["dropped"] == 0


def test_a_shard_whose_metadata_is_unreadable_still_comes_back(tmp_path, enc, capsys):
    archive, ix = tmp_path / "archive", tmp_path / "index"
    phantom(capsys, archive)
    index(capsys, archive, ix, enc, "--shard-size", 4)
    before = live_keys(ix)
    shard = ix / "shard-000001.h5"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF  # HDF5 object headers: the shard no longer opens
    shard.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", ix, "--repair", "--json")
    assert code == 0, err
    repair = json.loads(out)["repair"]
    assert repair["dropped_shards"] == ["shard-000001.h5"] and repair["dropped_items"] == 4
    summary = index(capsys, archive, ix, enc, "--shard-size", 4)
    assert (summary["indexed"], summary["dropped_unknown"], summary["live_items"]) == (4, 4, 12)
    assert live_keys(ix).keys() == before.keys()


def test_a_damaged_faiss_file_is_rebuilt_without_losing_an_item(tmp_path, enc, capsys):
    archive, ix = tmp_path / "archive", tmp_path / "index"
    phantom(capsys, archive)
    index(capsys, archive, ix, enc, "--shard-size", 4, "--index-spec", "HNSW16")
    part = ix / "shard-000002.faiss"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    assert run(capsys, "verify", ix)[0] == 1
    code, out, err = run(capsys, "verify", ix, "--repair")
    assert code == 0 and "rebuilt shard-000002.faiss (no item lost)" in out and "ok: 12 item(s)" in out, out + err
    uid = next(iter(live_keys(ix)))[0]
    code, out, err = run(capsys, "search", ix, uid, "-k", 20, "--json", "--per-series", 0)
    assert code == 0 and len(json.loads(out)[0]["neighbours"]) == 11, err

    trained = ix / json.loads((ix / "manifest.json").read_text())["trained"]["file"]
    trained.write_bytes(trained.read_bytes()[:-8])  # the trained parameters cut short: exact search until trained again
    code, out, err = run(capsys, "verify", ix, "--repair")
    assert code == 0 and f"rebuilt {trained.name} (no item lost)" in out, out + err
    code, out, err = run(capsys, "search", ix, uid, "-k", 20, "--json", "--per-series", 0)
    assert code == 0 and len(json.loads(out)[0]["neighbours"]) == 11, err
    assert index(capsys, archive, ix, enc, "--shard-size", 4, "--index-spec", "HNSW16")["index_spec"] == "HNSW16"
    assert json.loads((ix / "manifest.json").read_text())["trained"] and run(capsys, "verify", ix)[0] == 0


def test_verify_sources_reports_and_index_follows(tmp_path, enc, capsys):
    archive, ix = tmp_path / "archive", tmp_path / "index"
    phantom(capsys, archive, "--seed", 1)
    index(capsys, archive, ix, enc)
    code, out, _ = run(capsys, "verify", ix, "--sources")
    assert code == 0 and "sources ok: 12 source(s) checked: 0 missing" in out

    code, _, err = run(capsys, "phantom", archive, "--patients", 3, "--slices", 4, "--size", 32, "--seed", 2)
    assert code == 1 and err.count("\n") == 1 and "not empty" in err and "--force" in err
    phantom(capsys, archive, "--seed", 2, "--force")  # another archive in its place
    committed = (ix / "manifest.json").read_bytes()
    code, out, _ = run(capsys, "verify", ix, "--sources")
    assert code == 1 and "sources CHANGED: 12 source(s) checked: 12 missing (12 item(s))" in out
    code, out, _ = run(capsys, "verify", ix, "--sources", "--json")
    report = json.loads(out)["sources"]
    assert code == 1 and len(report["missing"]) == 12 and report["ok"] is False
    assert all(s.startswith("sealed:") for s in report["missing"])
    assert (ix / "manifest.json").read_bytes() == committed  # verify changed nothing

    summary = index(capsys, archive, ix, enc)
    assert (summary["gone_items"], summary["indexed"], summary["live_items"]) == (12, 12, 12)
    fresh = tmp_path / "fresh"
    index(capsys, archive, fresh, enc)
    assert live_keys(ix).keys() == live_keys(fresh).keys()
    code, out, _ = run(capsys, "verify", ix, "--sources")
    assert code == 0 and "sources ok" in out


def test_quarantine_lists_one_entry_per_file(tmp_path, enc, capsys):
    archive, ix = tmp_path / "archive", tmp_path / "index"
    phantom(capsys, archive)
    (archive / "notes.txt").write_text("not DICOM\n")
    for _ in range(2):
        index(capsys, archive, ix, enc)
    code, out, err = run(capsys, "quarantine", ix)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "7 file(s) skipped: not-dicom 7" and len(lines) == 8
    assert all(line.split()[0] == "not-dicom" and line.split()[1].startswith("sealed:") for line in lines[1:])
    data = json.loads(run(capsys, "quarantine", ix, "--json")[1])
    assert data["files"] == 7 and data["by_reason"] == {"not-dicom": 7} and not data["revealed"]
    revealed = json.loads(run(capsys, "quarantine", ix, "--json", "--reveal")[1])
    assert sorted(e["path"] for e in revealed["entries"]) == sorted(str(p) for p in archive.iterdir() if p.is_file())

    (ix / "pseudonym.key").rename(tmp_path / "key")  # the key kept elsewhere
    code, _, err = run(capsys, "quarantine", ix, "--reveal")
    assert code == 1 and err.startswith("error: --reveal needs the archive key") and err.count("\n") == 1
    code, out, _ = run(capsys, "quarantine", ix, "--reveal", "--key-file", tmp_path / "key")
    assert code == 0 and str(archive / "notes.txt") in out
