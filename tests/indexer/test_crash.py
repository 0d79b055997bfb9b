"""Crash safety: `medcbir index` killed with SIGKILL at chosen points of the commit protocol.

``MEDCBIR_TEST_KILL_AT=point:n`` makes the writer SIGKILL itself the n-th time it reaches
``point`` (medcbir/indexer/fsutil.py), i.e. a real ``kill -9`` at an exact moment; one more
run is killed from outside at an arbitrary moment. After every kill the last committed
generation must open and verify, and the final re-run must hold every slice exactly once.

The commit protocol is the same with or without regions; these runs skip them (``--no-regions``)
to stay quick, and ``tests/engine/test_region_search.py`` kills a run that stores regions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medcbir.indexer import IndexStore, verify
from medcbir.indexer.writer import key_hash

from .conftest import make_encoder

SLICES = 1000


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory):
    from medcbir.imaging.phantom import make_archive

    root = tmp_path_factory.mktemp("crash")
    summary = make_archive(root / "archive", patients=10, slices=SLICES // 10, seed=11, size=32, compress=False)
    assert summary.files == SLICES
    return root / "archive", make_encoder(root / "enc32.pt", size=32)


def run_index(archive, index_dir, encoder, kill_at=None, extra=(), wait=True, shard_size=100):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MEDCBIR_TEST_KILL_AT", None)
    if kill_at:
        env["MEDCBIR_TEST_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "medcbir", "index", str(archive), "--encoder", str(encoder), "--out", str(index_dir),
           "--shard-size", str(shard_size), "--workers", "1", "--batch-size", "64", "--no-progress", "--no-regions", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def committed(index_dir: Path) -> int:
    store = IndexStore.open(index_dir)
    n = len(store.ids)
    assert verify(index_dir).ok, verify(index_dir).problems
    return n


@pytest.mark.slow
def test_kill_at_every_commit_step_then_resume(crash_setup, tmp_path):
    archive, encoder = crash_setup
    index_dir = tmp_path / "index"

    # 1. Killed between a shard's fsync and its rename: 2 shards committed, a temp file left.
    rc, _, err = run_index(archive, index_dir, encoder, kill_at="shard-fsync:3")
    assert rc == -signal.SIGKILL, err
    assert committed(index_dir) == 200
    assert any(p.name.startswith(".shard-000003.h5.tmp-") for p in index_dir.iterdir())

    # 2. Killed after the new manifest is written and fsynced, before its rename:
    #    the renamed shard-000004 is an orphan, the old manifest still rules.
    rc, _, err = run_index(archive, index_dir, encoder, kill_at="manifest-rename:2")
    assert rc == -signal.SIGKILL, err
    assert committed(index_dir) == 300
    assert (index_dir / "shard-000004.h5").exists()
    assert not any(p.name.startswith(".shard-000003.h5.tmp-") for p in index_dir.iterdir())  # cleaned on resume

    # 3. Killed while the shard file is written but not yet fsynced or renamed.
    rc, _, err = run_index(archive, index_dir, encoder, kill_at="shard-write:2")
    assert rc == -signal.SIGKILL, err
    assert committed(index_dir) == 400

    # 4. kill -9 from outside at an arbitrary moment (after at least one more commit).
    proc = run_index(archive, index_dir, encoder, wait=False)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if IndexStore.open(index_dir, verify="none").generation >= 6:
                break
        except Exception:  # noqa: BLE001 - the manifest may be mid-rename: retry
            pass
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=60)
    partial = committed(index_dir)
    assert 500 <= partial <= SLICES

    # 5. The re-run completes: every slice exactly once, nothing orphaned.
    rc, out, err = run_index(archive, index_dir, encoder)
    assert rc == 0, err
    assert f"indexed          {SLICES - partial}" in out
    store = IndexStore.open(index_dir)
    assert len(store.ids) == SLICES
    keys = {key_hash(s, f) for s, f in zip(store.columns["sop_instance_uid"], store.columns["frame"])}
    assert len(keys) == SLICES
    assert len(np.unique(store.columns["source"])) == SLICES
    assert verify(index_dir).ok
    assert not [p.name for p in index_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_kill_while_writing_faiss_files_then_resume(phantom_archive, tmp_path, encoder_path):
    index_dir = tmp_path / "index"
    extra = ("--index-spec", "IVF4,Flat")
    # Shards commit, then close() trains the spec: killed at its 3rd FAISS file.
    rc, _, err = run_index(phantom_archive, index_dir, encoder_path, kill_at="faiss-fsync:3", extra=extra, shard_size=16)
    assert rc == -signal.SIGKILL, err
    store = IndexStore.open(index_dir)
    assert len(store.ids) == 80 and store.exact and not store.manifest["trained"]  # exact until trained
    assert verify(index_dir).ok
    rc, out, err = run_index(phantom_archive, index_dir, encoder_path, extra=extra, shard_size=16)
    assert rc == 0, err
    assert "indexed          0" in out
    store = IndexStore.open(index_dir)
    assert not store.exact and store.index_spec == "IVF4,Flat" and all(s["faiss"] for s in store.manifest["shards"])
    assert verify(index_dir).ok
