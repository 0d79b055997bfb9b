"""Restart safety and a small load run of the plugin inside a real Orthanc."""

from __future__ import annotations

import subprocess
import threading
import time

import pydicom
import pytest

from tests.pacs.conftest import storescu, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]


def index_keys(index) -> list[tuple[str, int]]:
    from medcbir.indexer import IndexStore

    store = IndexStore.open(index)
    return list(zip((str(s) for s in store.columns["sop_instance_uid"]), (int(f) for f in store.columns["frame"])))


def settled(server, expected: int):
    status = server.status()
    if status.get("indexed") == expected and status["queued"] == 0 and status["in_flight"] == 0:
        return status
    return None


def push_in_background(port: int, files) -> threading.Thread:
    """storescu in a thread; failures are expected when Orthanc is stopped under it."""
    from medcbir.pacs.orthanc_server import storescu_commands

    def run() -> None:
        for cmd in storescu_commands(port, files, aet="MEDCBIR", calling_aet="PYTEST"):
            subprocess.run(cmd, capture_output=True, timeout=120)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_sigterm_mid_indexing_then_restart_loses_and_duplicates_nothing(orthanc_factory, load_archive, small_encoder, tmp_path):
    load_archive = load_archive[:100]  # enough that the stop lands mid-indexing on a fast, quiet machine too
    index = tmp_path / "index"
    server = orthanc_factory(index, small_encoder, name="restart", batch_size=2, flush_seconds=0.2)
    port = server.config["DicomPort"]
    pusher = push_in_background(port, load_archive)
    wait_for(lambda: server.status()["indexed"] >= 4, timeout=90, interval=0.05, what="first commits")
    server.stop()  # SIGTERM: Orthanc's normal shutdown, which stops the worker mid-job
    pusher.join(60)
    committed_at_stop = len(index_keys(index))
    assert 0 < committed_at_stop < len(load_archive), "the stop must happen mid-indexing"

    restarted = orthanc_factory(index, small_encoder, name="restart", config_path=server.config_path)
    stored_after_restart = restarted.rest.statistics()["CountInstances"]
    assert stored_after_restart > committed_at_stop  # there is work to resume
    # Whatever storescu could not send before the stop is sent now.
    held = {i["MainDicomTags"]["SOPInstanceUID"] for i in restarted.rest.get_json("/instances?expand")}
    missing = [f for f in load_archive if str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) not in held]
    if missing:
        storescu(port, missing)
    status = wait_for(lambda: settled(restarted, len(load_archive)), timeout=120, what="all indexed after restart")
    assert restarted.rest.statistics()["CountInstances"] == len(load_archive) == status["indexed"]
    keys = index_keys(index)
    assert len(keys) == len(set(keys)) == len(load_archive)
    assert status["skipped"] == {}


@pytest.mark.slow
def test_parallel_stores_while_searching(orthanc_factory, load_archive, small_encoder, tmp_path):
    index = tmp_path / "index"
    server = orthanc_factory(index, small_encoder, name="load", batch_size=16, flush_seconds=0.5)
    port = server.config["DicomPort"]
    # Seed the index with one image so searches have something to answer from the start.
    storescu(port, load_archive[:1])
    wait_for(lambda: settled(server, 1), timeout=60, what="seed indexed")
    query = load_archive[-1].read_bytes()

    chunks = [load_archive[1 + i::4] for i in range(4)]
    pushers = [push_in_background(port, chunk) for chunk in chunks]
    answered, failed, latencies = 0, [], []
    while any(p.is_alive() for p in pushers) or not settled(server, len(load_archive)):
        start = time.perf_counter()
        resp = server.rest.post("/medcbir/search", data=query, headers={
            "Content-Type": "application/dicom", "X-Medcbir-K": "5"}, timeout=60)
        latencies.append(time.perf_counter() - start)
        # Fewer than 5 neighbours only while the index holds fewer than 5 items.
        if resp.status_code == 200 and 1 <= len(resp.json()["neighbours"]) <= 5:
            answered += 1
        else:
            failed.append((resp.status_code, resp.text[:200]))
        assert latencies[-1] < 30 and len(latencies) < 2000
    assert not failed
    assert answered >= 3
    stats = server.rest.statistics()
    status = server.status()
    assert stats["CountInstances"] == len(load_archive) == status["indexed"]
    keys = index_keys(index)
    assert len(keys) == len(set(keys)) == len(load_archive)
    final = server.rest.post("/medcbir/search", data=query, headers={"Content-Type": "application/dicom", "X-Medcbir-K": "5"})
    assert final.status_code == 200 and len(final.json()["neighbours"]) == 5


@pytest.mark.slow
def test_killed_worker_is_restarted_and_resumes(orthanc_factory, load_archive, small_encoder, tmp_path):
    import os
    import signal

    files = load_archive[50:]
    index = tmp_path / "index"
    server = orthanc_factory(index, small_encoder, name="crash", batch_size=2, flush_seconds=0.2)
    pusher = push_in_background(server.config["DicomPort"], files)
    wait_for(lambda: server.status()["indexed"] >= 4, timeout=90, interval=0.05, what="first commits")
    os.kill(server.status()["pid"], signal.SIGKILL)  # the worker dies mid-job (maybe mid-commit)
    pusher.join(120)
    status = wait_for(lambda: (s := settled(server, len(files))) and s["worker_restarts"] >= 1 and s,
                      timeout=120, what="restarted worker caught up")
    assert status["worker"] == "running"
    assert server.rest.statistics()["CountInstances"] == len(files)
    keys = index_keys(index)
    assert len(keys) == len(set(keys)) == len(files)
