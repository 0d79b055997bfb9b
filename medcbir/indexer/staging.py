"""Long maintenance jobs (compaction, retraining) that do not hold the writer lock while they work.

Such a job reads a snapshot generation, writes its new files into a private staging folder
(``INDEX/.staging-<pid>-<n>/``: invisible to readers and to the orphan clean-up of writers),
then takes the writer lock only to commit: it re-reads the newest manifest, brings in what
other writers committed meanwhile, renames its staged files to their final names (numbered
after the newest shards) and commits the manifest. A snapshot overtaken by another
maintenance job (a different shard prefix or trained file) is abandoned, not merged.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from pathlib import Path

from medcbir.fsutil import fsync_dir

STAGING = re.compile(r"^\.staging-(\d+)-\d+$")
_counter = itertools.count()


class Overtaken(Exception):
    """Another maintenance job committed first; the snapshot's work no longer applies."""


def new_staging(index_dir: Path) -> Path:
    path = Path(index_dir) / f".staging-{os.getpid()}-{next(_counter)}"
    path.mkdir()
    return path


def remove_stale_staging(index_dir: Path) -> list[str]:
    """Remove the staging folders of dead processes (a job killed mid-way)."""
    removed = []
    for path in Path(index_dir).iterdir():
        match = STAGING.match(path.name)
        if not match or not path.is_dir():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # a live job's folder
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def same_prefix(snapshot: dict, current: dict) -> bool:
    """True when ``current`` only appended shards/tombstones to ``snapshot`` (same trained file)."""
    old = [s["file"] for s in snapshot["shards"]]
    new = [s["file"] for s in current["shards"]]
    return new[: len(old)] == old and (snapshot.get("trained") or {}).get("file") == (current.get("trained") or {}).get("file")


def publish(staging: Path, index_dir: Path, entries: list[dict], first_number: int) -> int:
    """Rename staged shards (and their FAISS files) to ``shard-<n>`` names from ``first_number``.

    Updates ``entries`` in place; returns the next free shard number. Call holding the lock.
    """
    number = first_number
    for entry in entries:
        final = f"shard-{number:06d}"
        os.replace(staging / entry["file"], index_dir / f"{final}.h5")
        entry["file"] = f"{final}.h5"
        if entry.get("faiss"):
            suffix = entry["faiss"]["file"].split(".", 1)[1]
            os.replace(staging / entry["faiss"]["file"], index_dir / f"{final}.{suffix}")
            entry["faiss"] = {**entry["faiss"], "file": f"{final}.{suffix}"}
        number += 1
    fsync_dir(index_dir)
    return number
