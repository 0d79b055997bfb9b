"""`medcbir index | delete | compact | verify` end to end, in-process, on the phantom archive."""

from __future__ import annotations

import json

import pytest

from medcbir.cli.main import main
from tests.indexer.conftest import make_encoder


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("cli-enc") / "enc64.pt", size=64)


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_verify_delete_compact(tmp_path, phantom_archive, enc, capsys):
    index_dir = tmp_path / "index"
    code, out, err = run(capsys, "index", phantom_archive, "--encoder", enc, "--out", index_dir,
                         "--shard-size", "32", "--workers", "1", "--no-progress")
    assert code == 0, err
    assert "indexed          80" in out and "skipped          6 (not-dicom 6)" in out and "items/s" in out

    code, out, err = run(capsys, "index", phantom_archive, "--encoder", enc, "--out", index_dir, "--workers", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 0 and summary["already_present"] == 80 and summary["total_items"] == 80

    code, out, err = run(capsys, "verify", index_dir, "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert {k: report[k] for k in ("ok", "items", "shards", "deleted", "problems")} == {
        "ok": True, "items": 80, "shards": 3, "deleted": 0, "problems": []}

    from medcbir.indexer import IndexStore

    store = IndexStore.open(index_dir)
    series = sorted(set(store.columns["series_instance_uid"]))
    code, out, _ = run(capsys, "delete", index_dir, "--series", series[0])
    assert code == 0 and out.strip() == "tombstoned 20 item(s)"
    code, out, _ = run(capsys, "index", phantom_archive, "--encoder", enc, "--out", index_dir, "--workers", "1",
                       "--no-progress", "--no-maintenance", "--delete-study", store.columns["study_instance_uid"][store.columns["series_instance_uid"] == series[1]][0])
    assert code == 0 and "tombstoned       20" in out
    code, out, _ = run(capsys, "verify", index_dir)
    assert code == 0 and out.startswith("ok: 80 item(s) in 3 shard(s), 40 deleted")
    code, out, _ = run(capsys, "compact", index_dir)
    assert code == 0 and out.strip().startswith("removed 40 item(s), rewrote 3 shard(s); 40 item(s) in 1 shard(s)")
    code, out, _ = run(capsys, "verify", index_dir, "--json")
    assert json.loads(out)["items"] == 40 and json.loads(out)["deleted"] == 0


def test_verify_names_the_broken_shard_on_one_stderr_line(tmp_path, phantom_archive, enc, capsys):
    index_dir = tmp_path / "index"
    assert run(capsys, "index", phantom_archive, "--encoder", enc, "--out", index_dir, "--shard-size", "40",
               "--workers", "1", "--no-progress")[0] == 0
    shard = index_dir / "shard-000002.h5"
    blob = bytearray(shard.read_bytes())
    blob[1000] ^= 0xFF
    shard.write_bytes(bytes(blob))
    code, out, err = run(capsys, "verify", index_dir, "--json")
    assert code == 1
    assert json.loads(out)["ok"] is False
    assert err.count("\n") == 1 and err.startswith("error: shard-000002.h5: checksum mismatch")
    code, out, err = run(capsys, "verify", index_dir)
    assert code == 1 and out.startswith("BROKEN") and "shard-000002.h5" in err


def test_bad_input_gives_one_line_errors(tmp_path, phantom_archive, enc, capsys):
    code, _, err = run(capsys, "verify", tmp_path / "nowhere")
    assert code == 1 and err.startswith("error: index folder") and err.count("\n") == 1
    code, _, err = run(capsys, "index", phantom_archive, "--encoder", enc, "--out", tmp_path / "ix", "--index-spec", "IVF,what")
    assert code == 1 and "not a FAISS factory string" in err
    code, _, err = run(capsys, "index", tmp_path / "no-archive", "--encoder", enc, "--out", tmp_path / "ix2")
    assert code == 1 and err.startswith("error: archive not found")
    assert run(capsys, "index", phantom_archive, "--encoder", enc, "--out", tmp_path / "ix3", "--workers", "1", "--no-progress")[0] == 0
    other = make_encoder(tmp_path / "other.pt", size=64, seed=5)
    code, _, err = run(capsys, "index", phantom_archive, "--encoder", other, "--out", tmp_path / "ix3", "--workers", "1")
    assert code == 1 and "index built with encoder" in err
    code, _, err = run(capsys, "delete", tmp_path / "ix3")
    assert code == 1 and "--series" in err
