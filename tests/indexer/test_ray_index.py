"""The Ray indexer against the single-process one, on a real local Ray runtime.

One Ray runtime (loopback, 2 CPUs) serves the whole module; at the end it is shut down and no
process it started may be left. Faults are real: an embedding actor's process and a driver
process are SIGKILLed by pid in the middle of a run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.ray_procs import pids_matching, ray_runtime, wait_gone  # noqa: F401 - ray_runtime is a fixture

pytestmark = pytest.mark.ray


def index_keys(index: Path) -> dict[tuple[str, int], np.ndarray]:
    """(sop_instance_uid, frame) → embedding of every committed item (a key twice fails)."""
    manifest = json.loads((index / "manifest.json").read_text())
    out: dict = {}
    for entry in manifest["shards"]:
        with h5py.File(index / entry["file"], "r") as f:
            sops = [s.decode() for s in f["meta/sop_instance_uid"][...]]
            frames = f["meta/frame"][...]
            emb = f["embeddings"][...]
            assert list(f["ids"][...]) == list(range(entry["first_id"], entry["last_id"] + 1))
        for sop, frame, e in zip(sops, frames, emb):
            key = (sop, int(frame))
            assert key not in out, f"{key} indexed twice"
            out[key] = e
    return out


def assert_clean_folder(index: Path) -> None:
    """Every shard/FAISS file on disk is committed, every committed file exists."""
    from medcbir.indexer.manifest import read_manifest, referenced_files

    referenced = referenced_files(read_manifest(index))
    on_disk = {p.name for p in index.iterdir() if p.name.startswith(("shard-", "trained-", ".shard-"))}
    assert on_disk == referenced - {"manifest.json"}


def test_ray_index_equals_single_process(ray_runtime, built_index, phantom_archive, encoder_path, tmp_path):
    from click.testing import CliRunner

    from medcbir.cli.main import cli

    single, single_summary = built_index
    out = tmp_path / "ray-index"
    runner = CliRunner()
    # `medcbir index ARCHIVE --out B --ray ADDRESS` (the module's runtime), as a user runs it
    result = runner.invoke(cli, ["index", str(phantom_archive), "--out", str(out), "--encoder", str(encoder_path),
                                 "--shard-size", "16", "--ray", ray_runtime, "--ray-workers", "1", "--target-recall", "0.9", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["indexed"] == single_summary.indexed == summary["total_items"]
    assert summary["skipped"] == single_summary.skipped and summary["files"] == single_summary.files

    reports = [json.loads(runner.invoke(cli, ["verify", str(index), "--json"]).output) for index in (single, out)]
    assert reports[0]["ok"] and reports[1]["ok"], reports
    assert reports[0]["items"] == reports[1]["items"] and reports[0]["index_spec"] == reports[1]["index_spec"]
    assert reports[1]["target_recall"] == 0.9 and json.loads((out / "manifest.json").read_text())["target_recall"] == 0.9
    ka, kb = index_keys(single), index_keys(out)
    assert ka.keys() == kb.keys()
    assert max(float(np.abs(ka[k] - kb[k]).max()) for k in ka) <= 1e-5
    from tests.region_checks import assert_same_regions, region_data

    assert_same_regions(region_data(single), region_data(out))  # the same region index
    assert_clean_folder(out)
    # The same files recorded sealed (each index under its own key), each with the size and
    # mtime the next run compares.
    from medcbir.indexer import IndexStore
    from medcbir.indexer.follow import recorded_sources

    recorded = []
    for index in (single, out):
        with IndexStore.open(index) as store:
            found = recorded_sources(index, store.manifest)
            assert all(name.startswith("sealed:") for name in found)
            recorded.append({store.source_path(name): source for name, source in found.items()})
    assert recorded[0] == recorded[1] and all(source.state for source in recorded[1].values())

    # Same neighbours through the CLI, both indexes searched by the single-process engine.
    queries = [k[0] for k in sorted(ka)[::17]]
    answers = []
    for index in (single, out):
        result = runner.invoke(cli, ["search", str(index), *queries, "-k", "6", "--json", "--exclude", "same-patient"])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.output))
    for qa, qb in zip(*answers):
        assert [n["sop_instance_uid"] for n in qa["neighbours"]] == [n["sop_instance_uid"] for n in qb["neighbours"]]
        assert np.allclose([n["score"] for n in qa["neighbours"]], [n["score"] for n in qb["neighbours"]], atol=2e-6)

    bad = runner.invoke(cli, ["index", str(phantom_archive), "--out", str(tmp_path / "x"), "--ray-workers", "2"])
    assert bad.exit_code != 0 and "need --ray" in str(bad.exception) and not (tmp_path / "x").exists()


def test_ray_actors_rebuild_a_user_encoder_from_its_spec(ray_runtime, byo_models, phantom_archive, tmp_path, monkeypatch):
    """``--encoder hf:DIR`` relative to the driver's folder: the actors (started elsewhere) open it
    by the absolute source the index records, and embed what the single process embeds."""
    from click.testing import CliRunner

    from medcbir.cli.main import cli
    from medcbir.indexer import index_archive

    folder = Path(byo_models["hf-resnet"]["folder"])
    monkeypatch.chdir(folder.parent)
    out = tmp_path / "ray-hf"
    result = CliRunner().invoke(cli, ["index", str(phantom_archive), "--out", str(out), "--encoder", f"hf:{folder.name}",
                                      "--ray", ray_runtime, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["encoder"]["source"] == f"hf:{folder.resolve()}"
    single = tmp_path / "single-hf"
    index_archive(phantom_archive, single, f"hf:{folder.name}", progress=False, workers=1)
    ka, kb = index_keys(single), index_keys(out)
    assert ka.keys() == kb.keys() and len(ka) == 80
    assert max(float(np.abs(ka[k] - kb[k]).max()) for k in ka) <= 1e-5


@pytest.mark.slow
def test_killed_worker_mid_run_still_indexes_every_item_once(ray_runtime, phantom_archive, encoder_path, tmp_path):
    from medcbir.indexer import index_archive, verify

    out = tmp_path / "killed-worker"
    result: dict = {}

    def run():
        try:
            result["summary"] = index_archive(phantom_archive, out, str(encoder_path), shard_size=4, progress=False, ray=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    killed = None
    while time.monotonic() < deadline and killed is None and thread.is_alive():
        actors = pids_matching("EmbedWriter")
        if actors and list(out.glob("shard-*.h5")):
            killed = actors[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "the run ended before an embedding actor could be killed"
    shards_at_kill = len(list(out.glob("shard-*.h5")))
    thread.join(180)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary.total_items == summary.indexed == 80
    assert summary.shards > shards_at_kill  # the run went on after the kill
    report = verify(out)
    assert report.ok and report.items == 80, report.problems
    assert len(index_keys(out)) == 80
    assert_clean_folder(out)


@pytest.mark.slow
def test_killed_driver_rerun_resumes_exactly(ray_runtime, phantom_archive, encoder_path, tmp_path):
    from medcbir.indexer import index_archive, verify

    out = tmp_path / "killed-driver"
    cmd = [sys.executable, "-m", "medcbir", "index", str(phantom_archive), "--out", str(out), "--encoder", str(encoder_path),
           "--shard-size", "4", "--no-progress", "--ray", ray_runtime]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and driver.poll() is None:
        if manifest.is_file():
            committed = json.loads(manifest.read_text())["next_id"]
            if committed:
                break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(10)
    driver.stdout.close()
    assert 0 < committed < 80
    # Ray ends the dead driver's actors; a re-run must not race a late write of theirs.
    assert not wait_gone(pids_matching("EmbedWriter"), timeout=30)

    summary = index_archive(phantom_archive, out, str(encoder_path), shard_size=4, progress=False, ray=True)
    before = json.loads(manifest.read_text())
    assert summary.total_items == 80 == before["next_id"]
    assert summary.indexed == 80 - committed_at_least(committed, summary)
    report = verify(out)
    assert report.ok and report.items == 80, report.problems
    assert len(index_keys(out)) == 80
    assert_clean_folder(out)


def committed_at_least(seen: int, summary) -> int:
    """Items the killed run had committed (≥ what the test saw: it may have committed more)."""
    done = 80 - summary.indexed
    assert done >= seen
    return done


def test_ray_index_from_dicomweb_equals_single_process(ray_runtime, dicomweb_server, encoder_path, tmp_path):
    from medcbir.indexer import index_archive, verify
    from medcbir.pacs.dicomweb import DicomwebSource

    server, files = dicomweb_server
    url = f"dicomweb+{server.url}/dicom-web"
    single = index_archive(DicomwebSource(url, workers=1), tmp_path / "single", str(encoder_path), shard_size=4, progress=False, workers=1)
    distributed = index_archive(DicomwebSource(url, workers=1), tmp_path / "ray", str(encoder_path), shard_size=4, progress=False, ray=True)
    assert single.indexed == distributed.indexed == len(files)
    assert verify(tmp_path / "ray").ok
    ka, kb = index_keys(tmp_path / "single"), index_keys(tmp_path / "ray")
    assert ka.keys() == kb.keys() and len(ka) == len(files)
    assert max(float(np.abs(ka[k] - kb[k]).max()) for k in ka) <= 1e-5
    with h5py.File(next((tmp_path / "ray").glob("shard-*.h5")), "r") as f:
        assert all(s.decode().startswith(url + "/studies/") for s in f["meta/source"][...])
    # incremental: nothing new is downloaded or indexed
    again = index_archive(DicomwebSource(url, workers=1), tmp_path / "ray", str(encoder_path), shard_size=4, progress=False, ray=True)
    assert again.indexed == 0 and again.already_present == len(files) and again.total_items == len(files)


def test_ray_index_with_shard_dtype_auto_follows_the_writers_choice(ray_runtime, phantom_archive, encoder_path, tmp_path):
    from medcbir.indexer import IndexStore, index_archive, verify
    from medcbir.indexer.ray_index import index_archive_ray

    out = tmp_path / "ray-auto"
    index_archive_ray(phantom_archive, out, str(encoder_path), ray=ray_runtime, workers=1, shard_size=16, regions=False,
                      progress=False, shard_dtype="auto")
    manifest = json.loads((out / "manifest.json").read_text())
    storage = manifest["storage"]
    assert storage["requested"] == "auto" and "sq8" in storage["tried"]  # measured, smallest first
    # the dtype the writer's own measurement chooses on these embeddings (float32 was the bug)
    single = tmp_path / "single-auto"
    index_archive(phantom_archive, single, str(encoder_path), shard_size=16, regions=False, progress=False, workers=1,
                  shard_dtype="auto")
    expected = json.loads((single / "manifest.json").read_text())["storage"]["dtype"]
    assert expected != "float32" and storage["dtype"] == expected
    for entry in manifest["shards"]:
        with h5py.File(out / entry["file"], "r") as f:
            stored = f["embeddings"].dtype
            codec = f.attrs.get("embeddings_codec")
        assert (codec == expected and stored == np.uint8) if expected.startswith("sq") else stored == np.dtype(expected)
    assert verify(out).ok
    with IndexStore.open(out) as store:
        assert len(store) == sum(e["items"] for e in manifest["shards"]) and store.faiss_index.ntotal == len(store)


def test_ray_actors_code_with_one_codebook(ray_runtime, phantom_archive, tmp_path):
    """``--shard-dtype tc6`` on Ray: the first actor with enough embeddings fits the codebook, the
    ledger settles it, every actor codes its shards with it; the driver commits it."""
    from medcbir.indexer import IndexStore, index_archive, verify
    from medcbir.indexer.ray_index import index_archive_ray

    out = tmp_path / "ray-tc6"
    # thumbnail:4 gives 16-d embeddings: 32 items fit a codebook; two 40-item jobs, one per actor, may
    # each fit one: the ledger keeps the first
    index_archive_ray(phantom_archive, out, "thumbnail:4", ray=ray_runtime, workers=2, shard_size=40, regions=False,
                      progress=False, shard_dtype="tc6")
    manifest = json.loads((out / "manifest.json").read_text())
    storage = manifest["storage"]
    book = storage["codebook"]
    assert storage["requested"] == storage["dtype"] == "tc6" and book["file"].startswith("codec-") and book["fit_items"] == 40
    coded = [e for e in manifest["shards"] if e.get("codebook")]
    assert len(manifest["shards"]) == 2 and coded and {e["codebook"]["file"] for e in coded} == {book["file"]}
    for entry in manifest["shards"]:
        with h5py.File(out / entry["file"], "r") as f:
            if entry.get("codebook"):
                assert f.attrs["embeddings_codec"] == "tc6" and f.attrs["codebook"] == book["file"]
            else:  # the other patients' slices, too unlike the two the codebook was fitted on: float16
                assert f["embeddings"].dtype == np.float16 and "embeddings_codec" not in f.attrs
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("codec-")) == [book["file"]]  # actors' other fits: removed
    assert verify(out).ok
    single = tmp_path / "single"
    index_archive(phantom_archive, single, "thumbnail:4", shard_size=40, regions=False, progress=False, workers=1)
    with IndexStore.open(out) as store, IndexStore.open(single) as ref:
        mine = dict(zip(store.columns["sop_instance_uid"].tolist(), store.embeddings(store.ids)))
        theirs = dict(zip(ref.columns["sop_instance_uid"].tolist(), ref.embeddings(ref.ids)))
        assert mine.keys() == theirs.keys()
        # the float32 embeddings within what the codebook (fitted on one job: two of the four patients) codes them with
        err = max(np.abs(mine[k] - theirs[k]).max() for k in mine)
        assert err < 0.1, err
