"""Durable file writes shared by every stage: write under a temporary name, fsync, rename.

A file written through :func:`atomic_path` is either absent, the old version, or the complete new
version after a crash at any moment: it is written under a hidden temporary name in the same
folder, fsynced, renamed over its final name (atomic on POSIX), and the folder is fsynced so the
rename itself survives a power cut. The indexer adds checksums and crash-test hooks on top
(``medcbir.indexer.fsutil``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(final: Path) -> Path:
    """The temporary name a file is written under before its commit (same folder, hidden)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def commit_file(tmp: Path, final: Path, before_rename: Callable[[], None] | None = None) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the folder.

    Args:
        tmp: the fully written temporary file.
        final: its committed name.
        before_rename: called between the fsync and the rename (the indexer's crash-test hook).
    """
    fsync_file(tmp)
    if before_rename is not None:
        before_rename()
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(final: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` through; commit it when the block succeeds.

    The block writes the whole file at the yielded path (any library that takes a path). On an
    exception the temporary file is removed and ``final`` is untouched.

    Args:
        final: the file to (re)place; its folder is created.
        mode: permission bits for the file (e.g. ``0o600`` for secrets); None = the umask default.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        commit_file(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
