"""The fast whole-file checksum checked every time an index is opened.

sha256 (in every manifest entry, recomputed by ``verify``) is the strong, slow check: hashing a
1M-item index's shards with it is what made opening miss its time goal. Opening only needs to
catch a damaged or swapped file, not an adversary, so each entry also carries the XXH3-64 of
the file (``"xxh3"``: 16 hex digits), an order of magnitude faster than sha256 and faster than
``zlib.crc32`` (benchmarks/RESULTS.md: sections ``index_open`` and "Development measurements").
Files are hashed through ``mmap``:
no copy into Python buffers, and the page cache serves a recently written or opened index.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

FIELD = "xxh3"


def fast_checksum(path: str | Path) -> str:
    """XXH3-64 of the whole file as 16 hex digits."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return xxhash.xxh3_64(b"").hexdigest()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return xxhash.xxh3_64(mm).hexdigest()


def fast_many(paths: Iterable[Path], threads: int | None = None) -> list[str]:
    """:func:`fast_checksum` of several files (threads overlap page faults of cold files)."""
    paths = list(paths)
    if len(paths) <= 1:
        return [fast_checksum(p) for p in paths]
    with ThreadPoolExecutor(max_workers=threads or min(len(paths), max(2, os.cpu_count() or 2))) as pool:
        return list(pool.map(fast_checksum, paths))


def stamp(entry: dict | None, index_dir: Path) -> dict | None:
    """Add the fast checksum of ``entry['file']`` (a just-written, committed file) to ``entry``."""
    if entry is not None and FIELD not in entry:
        entry[FIELD] = fast_checksum(Path(index_dir) / entry["file"])
    return entry
