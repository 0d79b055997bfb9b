"""``medcbir search`` / ``medcbir evaluate`` on a real index: JSON schema, table, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medcbir.cli.main import main
from tests.engine.indexes import flat_index, make_encoder, small_encoder  # noqa: F401 - fixtures

NEIGHBOUR_KEYS = {"rank", "score", "percentile", "sop_instance_uid", "frame", "series_instance_uid", "study_instance_uid", "modality", "source"}


@pytest.fixture(scope="module")
def columns(flat_index):
    from medcbir.indexer import IndexStore

    store = IndexStore.open(flat_index)
    out = {name: np.asarray(store.columns[name]) for name in store.columns}
    out["source"] = np.asarray([store.source_path(s) for s in out["source"]])  # sealed → the file's path
    store.close()
    return out


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_json_schema(flat_index, columns, capsys):
    uid, path = columns["sop_instance_uid"][12], columns["source"][40]
    code, out, err = run(capsys, "search", flat_index, uid, path, "-k", "4", "--json", "--exclude", "same-patient")
    assert code == 0, err
    payload = json.loads(out)
    assert [q["query"] for q in payload] == [uid, path]
    for entry, row in zip(payload, (12, 40)):
        assert set(entry) == {"query", "neighbours"}
        assert [n["rank"] for n in entry["neighbours"]] == [1, 2, 3, 4]
        for n in entry["neighbours"]:
            assert set(n) == NEIGHBOUR_KEYS
            assert isinstance(n["score"], float) and isinstance(n["frame"], int)
            assert n["modality"] == "CT" and n["source"].endswith(".dcm")
            assert n["study_instance_uid"] != columns["study_instance_uid"][row]  # same patient excluded
        scores = [n["score"] for n in entry["neighbours"]]
        assert scores == sorted(scores, reverse=True)


def test_search_table_and_filters(flat_index, columns, capsys):
    uid = columns["sop_instance_uid"][7]
    series = columns["series_instance_uid"][70]
    code, out, err = run(capsys, "search", flat_index, uid, "-k", "3", "--series", series, "--per-series", "0")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"query: {uid}")
    assert lines[1].split() == ["rank", "score", "pct", "sop_instance_uid", "frame", "series", "modality", "source"]
    assert len([line for line in lines[2:] if line.strip()]) == 3
    assert all(series in line for line in lines[2:5])
    code, out, _ = run(capsys, "search", flat_index, uid, "-k", "3", "--json", "--include-self")
    top = json.loads(out)[0]["neighbours"][0]
    assert top["sop_instance_uid"] == uid and top["score"] == pytest.approx(1.0, abs=1e-5)


def test_percentiles_and_thresholds(flat_index, columns, capsys):
    """Each hit's score placed in the archive's sampled distribution (stored in the manifest at
    index time); --min-score / --min-percentile leave out weaker hits, none left is said so."""
    from medcbir.indexer import IndexStore
    from medcbir.indexer.similarity import percentile

    record = IndexStore.open(flat_index).manifest["similarity"]
    assert record["pairs"] > 0 and len(record["quantiles"]) == 201
    assert record["quantiles"] == sorted(record["quantiles"])
    uid = columns["sop_instance_uid"][7]
    code, out, err = run(capsys, "search", flat_index, uid, "-k", "5", "--json", "--exclude", "same-series")
    assert code == 0, err
    hits = json.loads(out)[0]["neighbours"]
    assert [h["percentile"] for h in hits] == [percentile(h["score"], record) for h in hits]
    assert all(0 <= h["percentile"] <= 100 for h in hits)
    assert [h["percentile"] for h in hits] == sorted((h["percentile"] for h in hits), reverse=True)
    assert all(h["series_instance_uid"] != columns["series_instance_uid"][7] for h in hits)
    cut = hits[2]["percentile"]
    code, out, err = run(capsys, "search", flat_index, uid, "-k", "5", "--json", "--exclude", "same-series", "--min-percentile", cut)
    kept = json.loads(out)[0]["neighbours"]
    assert code == 0 and [h["sop_instance_uid"] for h in kept] == [h["sop_instance_uid"] for h in hits if h["percentile"] >= cut]
    code, out, err = run(capsys, "search", flat_index, uid, "-k", "5", "--exclude", "same-series", "--min-score", "0.99999999")
    assert code == 0 and "no sufficiently similar image" in out
    code, out, err = run(capsys, "search", flat_index, uid, "--min-percentile", "101")
    assert code == 2 and "--min-percentile" in err  # a usage error


def test_evaluate_json_and_table(flat_index, capsys, phantom_archive):
    labels = phantom_archive / "labels.csv"
    code, out, err = run(capsys, "evaluate", flat_index, "--labels", labels, "-k", "5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"k", "exclude", "n_queries", "map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy", "per_class"} <= set(result)
    assert result["k"] == 5 and result["exclude"] == "same-patient" and result["n_queries"] == 80
    assert set(result["per_class"]) == {"thorax", "liver-dome", "liver-kidney", "kidney", "pelvis"}
    code, out, err = run(capsys, "evaluate", flat_index, "--labels", labels, "-k", "5", "--exclude", "none")
    assert code == 0, err
    lines = out.splitlines()
    assert "exclude=none" in lines[0] and lines[1].split()[:3] == ["class", "queries", "MAP@5"]
    overall = lines[2].split()
    assert overall[:2] == ["all", "80"] and all(0.0 <= float(v) <= 1.0 for v in overall[2:6])
    assert len(lines) == 3 + 5  # header, overall, one row per class


def test_errors_are_one_line(flat_index, columns, capsys, tmp_path):
    code, out, err = run(capsys, "search", tmp_path / "missing", "1.2.3")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "does not exist" in err
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    code, out, err = run(capsys, "search", flat_index, bad)
    assert code == 1 and err.startswith("error: cannot decode") and err.count("\n") == 1
    other = make_encoder(tmp_path / "other.pt", seed=3)
    code, out, err = run(capsys, "search", flat_index, columns["sop_instance_uid"][0], "--encoder", other)
    assert code == 1 and "encoder" in err and err.count("\n") == 1


def test_real_entry_point_missing_index(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medcbir", "evaluate", str(tmp_path / "nope"), "--labels", "x.csv"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_corrupt_shard_is_named(flat_index, columns, capsys, tmp_path):
    from tests.engine.indexes import copy_index

    index = copy_index(flat_index, tmp_path / "index")
    shard = sorted(index.glob("shard-*.h5"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out, err = run(capsys, "search", index, columns["sop_instance_uid"][0], "-k", "2")
    assert code == 1 and shard.name in err and err.count("\n") == 1
    # --verify sizes skips the checksums (fast open of huge indexes); the size still matches
    code, out, err = run(capsys, "search", index, columns["sop_instance_uid"][0], "-k", "2", "--verify", "sizes", "--json")
    assert code == 0 or shard.name in err


def test_a_huge_k_answers_every_item_in_bounded_memory(flat_index, columns, tmp_path):
    """`search -k 50000000` on an 80-item index: every other item, in the memory of a small search
    (the address space is capped: k-sized answer arrays could not even be allocated)."""
    command = [str(Path(sys.executable).parent / "medcbir"), "search", str(flat_index), columns["sop_instance_uid"][3],
               "-k", "50000000", "--json", "--per-series", "0", "--device", "cpu"]
    # A small Python caps the address space and runs the command as its child, then reports the
    # child's peak RSS: a child forked from this (large) test process would count the parent's
    # pages in its own ru_maxrss, since the peak survives exec.
    capped = [sys.executable, "-c", "import resource, subprocess, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
              "rc = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1], 'w')); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)", str(tmp_path / "out.json"), *command]
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.run(capped, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.returncode == 0, (proc.returncode, (tmp_path / "err.txt").read_text()[-2000:])
    assert len(json.loads((tmp_path / "out.json").read_text())[0]["neighbours"]) == 79
    peak_kib = int(proc.stdout.split()[-1])
    assert peak_kib < 1_500_000, peak_kib


def _empty_index(tmp_path, encoder) -> Path:
    from medcbir.indexer import index_archive

    (tmp_path / "empty").mkdir()
    index_archive(tmp_path / "empty", tmp_path / "index", str(encoder), progress=False, workers=1)
    return tmp_path / "index"


def test_an_index_of_an_empty_archive_gives_one_error_line(tmp_path, small_encoder, phantom_archive, capsys):
    index = _empty_index(tmp_path, small_encoder)
    query = next(phantom_archive.rglob("*.dcm"))
    for args in (["search", index, query], ["search", index, query, "--group-by", "study"],
                 ["evaluate", index, "--labels", phantom_archive / "labels.csv"],
                 ["explain", index, query, "-k", "2", "--masks", "10"]):
        code, out, err = run(capsys, *args)
        assert code == 1 and err.count("\n") == 1 and "holds no live item" in err and "internal error" not in err, (args, err)


def test_labels_that_are_not_utf8_give_one_error_line(flat_index, capsys, tmp_path):
    labels = tmp_path / "labels-latin1.csv"
    labels.write_bytes("sop_instance_uid,frame,label\n1.2.3,0,hépatique\n".encode("latin-1"))
    code, out, err = run(capsys, "evaluate", flat_index, "--labels", labels)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {labels} is not UTF-8 text (byte 0xe9 at offset")
