"""Finding the processes a Ray runtime started (from /proc: no psutil in the environment)."""

from __future__ import annotations

import os
import time

import pytest


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[1] not in ("Z", "X"):
                children.setdefault(stat[0], []).append(int(name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def pids_matching(text: str) -> list[int]:
    """Living descendants of this process whose command line contains ``text`` (e.g. an actor's class)."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(pid)
    return sorted(found)


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; returns those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if alive(p)]
    return left


@pytest.fixture(scope="module")
def ray_runtime():
    """A local Ray runtime for one test module (loopback, 2 CPUs); yields its GCS address.

    At teardown the runtime is shut down and every process it started must be gone.
    """
    ray = pytest.importorskip("ray")
    before = set(descendants(os.getpid()))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    address = ray.get_runtime_context().gcs_address
    started = set(descendants(os.getpid())) - before
    assert started, "ray.init started no process"
    yield address
    ray.shutdown()
    left = wait_gone(started | (set(descendants(os.getpid())) - before), timeout=30)
    assert not left, f"Ray processes left after shutdown: {left}"
