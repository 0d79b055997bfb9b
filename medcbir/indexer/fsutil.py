"""The indexer's durable files: whole-file checksums and crash-test hooks on top of
:mod:`medcbir.fsutil` (temporary name, fsync, atomic rename, folder fsync).

Every committed file of an index goes through :func:`commit_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medcbir.fsutil import commit_file as _commit_file
from medcbir.fsutil import tmp_name

_CHUNK = 8 << 20


def commit_file(tmp: Path, final: Path, hook: str | None = None) -> None:
    """:func:`medcbir.fsutil.commit_file` with the crash-test point ``hook`` fired before the rename."""
    _commit_file(tmp, final, before_rename=(lambda: crash_point(hook)) if hook else None)


def write_json_atomic(path: Path, data: dict, hook: str | None = None) -> None:
    """Write JSON to a temporary file and commit it atomically over ``path``."""
    tmp = tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    commit_file(tmp, path, hook=hook)


def sha256_file(path: str | Path) -> str:
    """Whole-file sha256 (hashlib releases the GIL, so several files hash in parallel threads)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def sha256_many(paths: Iterable[Path], threads: int | None = None) -> list[str]:
    """sha256 of several files, hashed concurrently."""
    paths = list(paths)
    if len(paths) <= 1:
        return [sha256_file(p) for p in paths]
    workers = threads or min(len(paths), max(2, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(sha256_file, paths))


_HOOK_COUNTS: dict[str, int] = {}


def crash_point(point: str) -> None:
    """Crash-test hook: ``MEDCBIR_TEST_KILL_AT=point[:n]`` kills this process with SIGKILL.

    The process kills itself at the n-th time (default 1st) it reaches ``point``: a real
    ``kill -9`` at a precise moment of the commit protocol: ``shard-write`` (shard written,
    not fsynced), ``shard-fsync`` (fsynced, not renamed), ``faiss-fsync`` (a FAISS/codes file
    fsynced, not renamed), ``lists-fsync`` (persisted inverted lists fsynced, not renamed), ``region-fsync`` (a region search structure file fsynced, not
    renamed: :mod:`~medcbir.indexer.region_index`), ``manifest-rename`` (new manifest fsynced,
    not renamed). Unset in normal runs.
    """
    spec = os.environ.get("MEDCBIR_TEST_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _HOOK_COUNTS[point] = _HOOK_COUNTS.get(point, 0) + 1
    if _HOOK_COUNTS[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
