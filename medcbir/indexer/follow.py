"""The index follows its sources: items whose file is gone or changed are noticed.

Every shard records, for each source file it holds, the file's size and mtime seen before the
file was decoded (the shard's ``sources/`` group). An indexing run over a folder lists the
folder first and compares (:func:`compare`): a live source of that folder that is no longer
listed is *gone* (its items are tombstoned), one whose size or mtime differs is *changed* (its
items are tombstoned and the file is decoded and embedded again in the same run), one with no
recorded state (indexed before states were recorded) is *unknown* (kept as it is). A source
whose items are all tombstoned stays so while its file is as it was indexed (``medcbir
delete`` is not undone by the next run), and *returns* (is indexed again) once its file is
there with another size or mtime (a file gone and back, a folder re-written). A DICOMweb
server is followed the same way by its instance listing (an instance has no size or mtime:
only gone instances are noticed). ``medcbir verify --sources`` runs the same checks without
changing anything (:func:`check_recorded`: each recorded file is looked at where it was).

Only sources inside the archive being indexed are compared: an index holding several archives
keeps the others' items.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from medcbir.imaging.walk import list_files
from medcbir.indexer.manifest import deleted_ids, read_manifest
from medcbir.indexer.shard import read_source_stats
from medcbir.indexer.store import seal_of

#: A source's recorded state: (size in bytes, mtime in ns).
State = tuple[int, int]


@dataclass
class SourceReport:
    """Live sources compared with what is there now.

    Attributes:
        checked: live sources compared.
        missing: recorded sources whose file (or instance) is gone.
        changed: recorded sources whose file's size or mtime differs.
        unknown: live sources with no recorded state (only their presence was checked).
        missing_items, changed_items: live items of those sources.
        not_checked: live sources outside what was looked at (another archive, a URI).
        returned: sources whose items are all tombstoned and whose file is there again with
            another size or mtime (indexed again by an indexing run).
    """

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unknown: int = 0
    missing_items: int = 0
    changed_items: int = 0
    not_checked: int = 0
    returned: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        return (f"{self.checked} source(s) checked: {len(self.missing)} missing ({self.missing_items} item(s)), "
                f"{len(self.changed)} changed ({self.changed_items} item(s)), {self.unknown} without a recorded state"
                + (f"; {self.not_checked} not checked (elsewhere)" if self.not_checked else ""))


@dataclass
class RecordedSource:
    """A source of the index: its live and tombstoned items, and its recorded state (None
    when not recorded): the live items' when it has some, else the last one recorded."""

    items: int
    state: State | None
    tombstoned: int = 0


def recorded_sources(index_dir: Path, manifest: dict) -> dict[str, RecordedSource]:
    """Every source the committed items record, with its live and tombstoned item counts."""
    deleted = deleted_ids(index_dir, manifest, verify=False)
    out: dict[str, RecordedSource] = {}
    for entry in manifest["shards"]:  # in commit order: a later record of a source wins
        path = Path(index_dir) / entry["file"]
        with h5py.File(path, "r") as f:
            if "source" not in f["meta"]:
                continue
            column = f["meta"]["source"][...]
            live = ~np.isin(f["ids"][...], deleted)
        states = read_source_stats(path)
        names, inverse = np.unique(column, return_inverse=True)
        n_live = np.bincount(inverse, weights=live, minlength=len(names)).astype(int)
        n_all = np.bincount(inverse, minlength=len(names))
        for name, alive, total in zip(names.tolist(), n_live.tolist(), n_all.tolist()):
            text = name.decode("utf-8")
            state = states.get(name)
            known = out.get(text)
            if known is not None and (known.items and not alive or state is None):
                state = known.state  # a later tombstoned record never hides a live one's state
            out[text] = RecordedSource((known.items if known else 0) + alive, state,
                                       (known.tombstoned if known else 0) + total - alive)
    return out


def file_state(path: str | Path) -> State | None:
    """(size, mtime_ns) of a file, None when it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


class FolderListing:
    """A folder archive (or one file) as its sources would be recorded, with their states.

    Args:
        path: the archive folder or file.
        record: how a file path is recorded (a seal's ``seal``; default: the path).
        opened: a recorded source → the file path it names (a seal's ``open``).
    """

    def __init__(self, path: str | Path, record: Callable[[str], str] | None = None,
                 opened: Callable[[str], str] | None = None) -> None:
        self.path = Path(os.path.abspath(path))
        self._record = record or str
        self._opened = opened or str

    def current(self) -> dict[str, State | None]:
        """Recorded name → state of every file there now (listed as the walk lists them)."""
        return {self._record(str(p)): file_state(p) for p in list_files(self.path)}

    def owns(self, recorded: str) -> bool:
        """True for a recorded source naming a file inside this archive."""
        opened = self._opened(recorded)
        if "://" in opened or not os.path.isabs(opened):
            return False  # a URI, or a record that did not open
        return Path(opened) == self.path or Path(opened).is_relative_to(self.path)


class UriListing:
    """A network archive whose sources are URIs under ``prefix`` (e.g. a DICOMweb server)."""

    def __init__(self, prefix: str, listing: Callable[[], Iterator[str]]) -> None:
        self.prefix = prefix.rstrip("/") + "/"
        self._listing = listing

    def current(self) -> dict[str, State | None]:
        return {uri: None for uri in self._listing()}

    def owns(self, recorded: str) -> bool:
        return recorded.startswith(self.prefix)


def compare(recorded: dict[str, RecordedSource], listing, current: dict[str, State | None]) -> SourceReport:
    """Which sources of ``listing``'s archive are gone, changed or returned in ``current``."""
    report = SourceReport()
    for name, live in recorded.items():
        if not live.items:
            now = current.get(name)
            if now is not None and live.state is not None and now != live.state and listing.owns(name):
                report.returned.append(name)
            continue
        if not listing.owns(name):
            report.not_checked += 1
            continue
        report.checked += 1
        if name not in current:
            report.missing.append(name)
            report.missing_items += live.items
        elif current[name] is None:
            continue  # an instance: no state to compare
        elif live.state is None:
            report.unknown += 1
        elif live.state != current[name]:
            report.changed.append(name)
            report.changed_items += live.items
    return report


def check_recorded(recorded: dict[str, RecordedSource], opened: Callable[[str], str],
                   uri_listing: Callable[[str], Iterator[str]] | None = None) -> SourceReport:
    """Each live source looked at where it was recorded (``verify --sources``; read-only).

    Args:
        recorded: :func:`recorded_sources` (sources without live items are not looked at).
        opened: a recorded source → the file path it names (a seal's ``open``).
        uri_listing: a DICOMweb base URL (``dicomweb+http://HOST/ROOT``) → the instance URIs
            there now; None: URIs are not checked.
    """
    report = SourceReport()
    listings: dict[str, set[str]] = {}
    for name, live in recorded.items():
        if not live.items:
            continue
        path = opened(name)
        base = path.split("/studies/")[0] if path.startswith("dicomweb+") and "/studies/" in path else None
        if base is not None and uri_listing is not None:
            if base not in listings:
                listings[base] = set(uri_listing(base))
            report.checked += 1
            if path not in listings[base]:
                report.missing.append(name)
                report.missing_items += live.items
            continue
        if not os.path.isabs(path):
            report.not_checked += 1  # another URI, or a sealed record that does not open (no key)
            continue
        report.checked += 1
        state = file_state(path)
        if state is None:
            report.missing.append(name)
            report.missing_items += live.items
        elif live.state is None:
            report.unknown += 1
        elif live.state != state:
            report.changed.append(name)
            report.changed_items += live.items
    return report


def verify_sources(index_dir: str | Path, uri_listing: Callable[[str], Iterator[str]] | None = None) -> SourceReport:
    """:func:`check_recorded` on the committed generation of ``index_dir`` (nothing changes).

    Raises:
        IndexNotFound, IndexCorrupt: as for reading the manifest.
    """
    manifest = read_manifest(index_dir)
    seal = seal_of(Path(index_dir), manifest)
    return check_recorded(recorded_sources(Path(index_dir), manifest), seal.open if seal is not None else str, uri_listing)


def follow_sources(src, writer, summary) -> tuple[object, dict]:
    """Tombstone the items of the archive's sources that are gone or changed since they were
    indexed (:mod:`medcbir.indexer.follow`); changed files are then decoded again.

    Returns:
        (the archive's listing, recorded name → (size, mtime_ns) of what is there now), or
        (None, {}) for a source that cannot be listed (its items are kept as they are).
    """
    if getattr(src, "path", None) is not None and hasattr(src, "root"):  # a folder (or the Ray indexer's units of one)
        seal = writer.archive_seal(src.root)
        listing = FolderListing(src.path, seal.seal, seal.open)
    elif callable(getattr(src, "instances", None)) and callable(getattr(src, "uri", None)) and getattr(src, "name", ""):
        listing = UriListing(f"{src.name}/studies", lambda: (src.uri(*k) for k in src.instances()))
    else:
        return None, {}
    current = listing.current()
    found = compare(recorded_sources(writer.index_dir, writer.manifest), listing, current)
    writer.delete_sources(found.missing + found.changed)
    writer.release_sources(found.changed + found.returned)  # decoded and embedded again below
    summary.gone_sources, summary.gone_items = len(found.missing), found.missing_items
    summary.changed_sources, summary.changed_items = len(found.changed), found.changed_items
    summary.unknown_sources = found.unknown
    return listing, current
