"""``INDEX/quarantine.log``: the files an indexing run skipped, one entry per file.

Each line is ``path<TAB>reason<TAB>detail`` (the path sealed like the shards' sources: see
:mod:`medcbir.imaging.source_seal`). The walk appends a line per skipped file as it goes (a
killed run keeps what it logged); when the run ends, :func:`settle` rewrites the log with one
entry per file, the latest: a file skipped again replaces its older entry, and after a
complete run over an archive, entries of that archive's files that were not skipped again
(fixed, indexed, or gone) are dropped. Entries of other archives stay.

:func:`read_log` reads it back for ``medcbir quarantine``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medcbir.indexer.fsutil import commit_file, tmp_name
from medcbir.indexer.lock import WriterLock

LOG = "quarantine.log"


@dataclass
class Entry:
    """One skipped file: its recorded path, the skip reason and one line of detail."""

    path: str
    reason: str
    detail: str = ""

    def line(self) -> str:
        path = self.path.replace("\t", "\\t").replace("\n", "\\n")
        return f"{path}\t{' '.join(self.reason.split())}\t{' '.join(self.detail.split())}\n"


def log_path(index_dir: str | Path) -> Path:
    return Path(index_dir) / LOG


def mark(index_dir: str | Path) -> int:
    """Where this run's entries will start in the log (its current size)."""
    try:
        return log_path(index_dir).stat().st_size
    except OSError:
        return 0


def _parse(data: bytes) -> dict[str, Entry]:
    """Entries by path, the latest line of a path winning (lines cut short are ignored)."""
    out: dict[str, Entry] = {}
    for raw in data.decode("utf-8", "replace").splitlines():
        parts = raw.split("\t", 2)
        if len(parts) < 2 or not parts[0]:
            continue
        out.pop(parts[0], None)  # re-inserted: the order is the order of the latest entries
        out[parts[0]] = Entry(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    return out


def read_log(index_dir: str | Path) -> list[Entry]:
    """The log's entries, one per file (the latest), oldest first; [] without a log."""
    try:
        data = log_path(index_dir).read_bytes()
    except FileNotFoundError:
        return []
    return list(_parse(data).values())


def settle(index_dir: str | Path, start: int, owns: Callable[[str], bool] | None) -> int:
    """Rewrite the log with one entry per file (atomically, under the writer lock).

    Args:
        index_dir: the index folder.
        start: :func:`mark` taken before the run: lines from there on are the run's.
        owns: after a complete run over an archive, True for a path of that archive (its
            older entries not logged again by the run are dropped); None after an interrupted
            run, or a run whose archive cannot tell its own paths (only duplicates go).

    Returns:
        the number of entries kept.
    """
    path = log_path(index_dir)
    if not path.is_file():
        return 0
    with WriterLock(index_dir, wait=True):
        data = path.read_bytes()
        earlier, latest = _parse(data[:start]), _parse(data[start:])
        kept = {p: e for p, e in earlier.items() if owns is None or not owns(p)}
        for p, e in latest.items():
            kept.pop(p, None)
            kept[p] = e
        tmp = tmp_name(path)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(e.line() for e in kept.values())
        commit_file(tmp, path)
    return len(kept)


def append(index_dir: str | Path, entries: list[Entry]) -> None:
    """Append entries (a run that does not walk with a log, e.g. the Ray indexer's driver)."""
    if not entries:
        return
    with open(log_path(index_dir), "a", encoding="utf-8") as fh:
        fh.writelines(e.line() for e in entries)
