"""Re-describe the regions of an existing index in place, from its sources.

An index records the region recipe its regions were made by (``regions.version``); a region
query and new items need this medcbir's recipe (:data:`~medcbir.encoders.regions.REGIONS_VERSION`).
Region descriptors do not depend on the slice encoder, so a new recipe does not need the
slices embedded again: :func:`refresh_regions` (``medcbir index ARCHIVE --out INDEX
--refresh-regions``) decodes each item's source again, finds and describes its regions and
writes them into the item's shard. The slice embeddings, the metadata, the ids and the FAISS
files are not touched. An index built with ``--no-regions`` gains regions the same way.

How it is committed, shard by shard, like every other change:

- A shard is immutable once committed, so a re-described shard is a new file,
  ``shard-N.rG.h5`` (G = the generation committing it): a copy of the old one, byte for byte
  (:func:`~medcbir.indexer.shard.rewrite_regions`), with the new ``regions/`` group. Its
  manifest entry keeps the shard's ids and FAISS file and says ``regions_version``; the old file
  stays while a kept generation references it.
- While the refresh runs, the manifest holds ``regions_refresh`` (the recipe being written, its
  dimension and regions per image) beside ``regions`` (the recipe of the shards not yet done, or
  nothing): ``verify`` accepts either in the shard that says which, and region queries are
  refused as for any index of another recipe, so no query compares regions of two recipes.
- When every shard is done, one last commit makes ``regions`` the new recipe and drops the
  markers; that commit stores the region search structure anew
  (:func:`medcbir.indexer.region_index.maintain`: the recipe changed, so every part is computed
  from the new descriptors and an IVF above 2²⁰ regions is trained again).

A kill -9 loses at most the shard being written: the next run finds the shards already done by
their ``regions_version`` and continues with the others. Each shard is described without the
writer lock and committed under it; a shard that compaction or a repair replaced meanwhile is
done again in the same run, and shards other writers committed meanwhile too.

An item whose source cannot be read again gets no regions, and is counted and named by its
source as the index records it (sealed for a folder: ``medcbir quarantine --reveal`` opens such
names with the key): ``gone`` (the file is not there), ``changed`` (its size or modification
time differs from when it was embedded: its regions would describe another image than its
embedding; ``medcbir index`` re-embeds changed files), ``unreadable`` (it no longer decodes),
``not-found`` (it decodes, without that frame), ``outside`` (not in the ARCHIVE given, or a URI
of another server). Tombstoned items get no regions (they are never answered, and compaction
removes them).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medcbir.encoders.regions import DIM, PER_IMAGE, REGIONS_VERSION, RegionsOnly
from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.imaging.source_seal import SourceSeal
from medcbir.imaging.walk import walk
from medcbir.indexer.checksum import FIELD, stamp
from medcbir.indexer.follow import FolderListing, file_state
from medcbir.indexer.lock import WriterLock
from medcbir.indexer.manifest import commit_manifest, deleted_ids, read_manifest
from medcbir.indexer.shard import read_source_stats, rewrite_regions
from medcbir.indexer.store import read_key, seal_of
from medcbir.indexer.writer import remove_orphans, shard_regions

log = logging.getLogger(__name__)

#: Why an item got no regions (``RefreshSummary.skipped`` keys).
REASONS = ("gone", "changed", "unreadable", "not-found", "outside")
#: Passes over the shards: a shard replaced meanwhile (compaction) is done again in the next one.
PASSES = 3


@dataclass
class RefreshSummary:
    """What :func:`refresh_regions` did.

    Attributes:
        version: the region recipe written.
        previous: the recipe the index held before (None: an index without regions).
        complete: every shard holds the new recipe and the manifest says so.
        shards: shards in the index.
        refreshed: shards re-described by this run.
        resumed: shards an earlier, interrupted run had done.
        items: live items described.
        regions: regions they got.
        tombstoned: tombstoned items (given no regions).
        skipped: reason → live items given no regions (see the module docstring).
        sources: reason → the sources of those items, as the index records them.
        elapsed: seconds.
    """

    version: str = REGIONS_VERSION
    previous: str | None = None
    complete: bool = False
    shards: int = 0
    refreshed: int = 0
    resumed: int = 0
    items: int = 0
    regions: int = 0
    tombstoned: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed if self.elapsed > 0 else 0.0

    def skip(self, reason: str, source: str, items: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + int(items)
        names = self.sources.setdefault(reason, [])
        if source not in names:
            names.append(source)

    def to_dict(self) -> dict:
        return {**asdict(self), "items_per_s": round(self.items_per_s, 2)}


@dataclass
class _Job:
    """One shard to re-describe: its live items by source, and the regions found so far."""

    entry: dict
    items: int
    by_source: dict[str, dict[tuple[str, int], int]]  # source → (sop, frame) → row (live items)
    waiting: set[str]  # sources not yet decoded (or given up)
    found: dict[int, Any] = field(default_factory=dict)  # row → RegionSet
    tombstoned: int = 0


def refresh_regions(index_dir: str | Path, source: Any = None, *, workers: int = 0, key_file: str | Path | None = None,
                    regions_per_image: int | None = None, progress: bool = False, timeout: float = 30.0) -> RefreshSummary:
    """Re-describe every item's regions by this medcbir's recipe, in place (see the module docstring).

    Args:
        index_dir: the index.
        source: where the items' files are: None or a folder (the index's recorded sources,
            opened with its key; a folder given limits them to that folder, or stands for the
            archive root when the archive moved), or a network :class:`~medcbir.imaging.Source`
            (DICOMweb) whose instances the index recorded.
        workers: decoding processes for files (0 = auto).
        key_file: the archive's pseudonym key (default: the index's).
        regions_per_image: structures kept per image, for an index that had no regions (default
            :data:`~medcbir.encoders.regions.PER_IMAGE`); an index with regions keeps its own.
        progress: a progress bar on stderr.
        timeout: seconds one file may take to decode and describe.

    Returns:
        the :class:`RefreshSummary`; ``complete`` is False only when shards kept being replaced
        meanwhile (run it again).

    Raises:
        IndexNotFound, IndexCorrupt: as for opening the index.
        ConfigError: a refresh of another recipe or regions per image is under way.
    """
    start = time.perf_counter()
    index_dir = Path(index_dir)
    with WriterLock(index_dir, wait=True):
        manifest = read_manifest(index_dir)
        remove_orphans(index_dir, manifest)
    summary = RefreshSummary(previous=(manifest.get("regions") or {}).get("version"), shards=len(manifest["shards"]))
    target = _target(manifest, regions_per_image)
    if (manifest.get("regions") or {}).get("version") == REGIONS_VERSION and not manifest.get("regions_refresh"):
        summary.complete = True  # nothing to do: the regions are this recipe's
        summary.elapsed = time.perf_counter() - start
        return summary
    key = Path(key_file).read_bytes() if key_file else read_key(index_dir, manifest)
    summary.resumed = sum(1 for e in manifest["shards"] if e.get("regions_version") == REGIONS_VERSION)
    bar = _bar(progress)
    try:
        for _ in range(PASSES):
            manifest = read_manifest(index_dir)
            pending = [e for e in manifest["shards"] if e.get("regions_version") != REGIONS_VERSION]
            if not pending:
                break
            jobs = _jobs(index_dir, manifest, pending)
            if bar is not None:
                bar.total = (bar.total or 0) + sum(len(rows) for job in jobs for rows in job.by_source.values())
                bar.refresh()
            _Run(index_dir, manifest, jobs, target, summary, key, bar).run(source, workers, timeout)
        summary.complete = _finish(index_dir, target)
    finally:
        if bar is not None:
            bar.close()
    summary.elapsed = time.perf_counter() - start
    return summary


def _target(manifest: dict, per_image: int | None) -> dict:
    """The ``regions`` record the refresh writes (a refresh under way keeps its own)."""
    under_way = manifest.get("regions_refresh")
    if under_way:
        if under_way.get("version") != REGIONS_VERSION:
            raise ConfigError(f"a refresh to region recipe {under_way.get('version')!r} is under way on this index; "
                              f"this medcbir makes {REGIONS_VERSION!r}: finish it with the medcbir that started it")
        if per_image is not None and int(per_image) != int(under_way["per_image"]):
            raise ConfigError(f"a refresh with --regions-per-image {under_way['per_image']} is under way on this index; "
                              "resume it without another value")
        return dict(under_way)
    own = (manifest.get("regions") or {}).get("per_image")
    if per_image is not None and own is not None and int(per_image) != int(own):
        raise ConfigError(f"this index keeps {own} regions per image; --regions-per-image applies to an index without regions")
    per_image = int(own if own is not None else (per_image if per_image is not None else PER_IMAGE))
    if per_image < 1:
        raise ConfigError(f"--regions-per-image must be ≥ 1, not {per_image}")
    return {"version": REGIONS_VERSION, "dim": DIM, "per_image": per_image}


def _bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, unit="item", file=sys.stderr, dynamic_ncols=True, desc="regions", smoothing=0.1)


def _jobs(index_dir: Path, manifest: dict, pending: list[dict]) -> list[_Job]:
    deleted = deleted_ids(index_dir, manifest, verify=False)
    jobs = []
    for entry in pending:
        with h5py.File(index_dir / entry["file"], "r") as f:
            meta = f["meta"]
            ids = f["ids"][...]
            sops, frames = meta["sop_instance_uid"][...], meta["frame"][...]
            sources = meta["source"][...] if "source" in meta else np.full(len(ids), b"")
        live = ~np.isin(ids, deleted)
        by_source: dict[str, dict[tuple[str, int], int]] = {}
        for row in np.flatnonzero(live):
            by_source.setdefault(sources[row].decode("utf-8"), {})[(sops[row].decode("utf-8"), int(frames[row]))] = int(row)
        jobs.append(_Job(entry, len(ids), by_source, set(by_source), tombstoned=int((~live).sum())))
    return jobs


class _Run:
    """One pass: decode the pending shards' sources, describe their items, commit each shard as
    soon as all of its sources are done."""

    def __init__(self, index_dir: Path, manifest: dict, jobs: list[_Job], target: dict, summary: RefreshSummary, key, bar) -> None:
        self.index_dir, self.manifest, self.jobs, self.target = index_dir, manifest, jobs, target
        self.summary, self.key, self.bar = summary, key, bar
        self.job_of: dict[str, list[_Job]] = {}
        for job in jobs:
            for name in job.by_source:
                self.job_of.setdefault(name, []).append(job)
        self.committed: set[int] = set()

    # ------------------------------------------------------------------ decoding
    def run(self, source: Any, workers: int, timeout: float) -> None:
        prep = RegionsOnly(int(self.target["per_image"]))
        for job in self.jobs:
            self._maybe_commit(job)  # a shard without live items
        if source is None or isinstance(source, (str, Path)):
            self._folder(Path(source) if source is not None else None, prep, workers, timeout)
        else:
            self._network(source, prep)
        for job in self.jobs:  # what never came back: gone from the source
            for name in sorted(job.waiting):
                self._give_up(name, "gone" if source is None or isinstance(source, (str, Path)) else "outside")
            self._maybe_commit(job)

    def _folder(self, folder: Path | None, prep, workers: int, timeout: float) -> None:
        seal = seal_of(self.index_dir, self.manifest, self.key)
        listing = None
        if folder is not None:
            folder = Path(os.path.abspath(folder))
            if not folder.exists():
                raise ArchiveNotFound(f"archive not found: {folder}")
            if seal is not None and not seal.contains(folder) and self.key is not None:
                seal = _moved(self.key, folder)  # the archive moved: its files, under their recorded names
            listing = FolderListing(folder, seal.seal if seal else str, seal.open if seal else str)
        opened = (seal.open if seal is not None else str)
        names: dict[str, str] = {}  # path decoded → recorded source
        state: dict[str, Any] = {"last": None}

        def paths():
            for job in self.jobs:
                stats = read_source_stats(self.index_dir / job.entry["file"])
                for name in list(job.by_source):
                    if name not in job.waiting:
                        continue
                    path = opened(name)
                    if "://" in path or not os.path.isabs(path) or (listing is not None and not listing.owns(name)):
                        self._give_up(name, "outside")
                        continue
                    now = file_state(path)
                    recorded = stats.get(name.encode("utf-8"))
                    if now is None:
                        self._give_up(name, "gone")
                    elif recorded is not None and tuple(recorded) != now:
                        self._give_up(name, "changed")
                    else:
                        names[os.path.abspath(path)] = name
                        yield Path(path)
                self._maybe_commit(job)

        def on_file(path: str, n: int, reason: str | None) -> None:
            # Called before the file's items are handed over: the file before it is complete.
            self._file_done(state["last"])
            name = names.get(os.path.abspath(path))
            state["last"] = name
            if reason is not None and name is not None:
                log.info("%s: %s", name, reason)
                self._give_up(name, "unreadable")
                state["last"] = None

        w = walk(paths(), preprocessing=prep, workers=workers, key=self.key, timeout=timeout, on_file=on_file)
        for decoded in w:
            path = os.path.abspath(str(decoded.meta.source))
            self._add(names.get(path, path), decoded)
        self._file_done(state["last"])

    def _network(self, source: Any, prep) -> None:
        def done(uri: str) -> bool:  # True: not fetched (no pending item of this index)
            return not any(uri in job.waiting for job in self.job_of.get(uri, ()))

        for decoded in source.decoded(prep, self.key, done):
            name = str(decoded.meta.source)
            self._add(name, decoded)
        for name, reason in _skipped_sources(source):
            if any(name in job.waiting for job in self.job_of.get(name, ())):
                self._give_up(name, "unreadable")

    # ------------------------------------------------------------------ bookkeeping
    def _add(self, name: str, decoded) -> None:
        key = (str(decoded.meta.sop_instance_uid), int(decoded.meta.frame))
        for job in self.job_of.get(name, ()):
            row = job.by_source.get(name, {}).get(key)
            if row is not None and name in job.waiting and row not in job.found:
                job.found[row] = decoded.extras.get("regions")
                if self.bar is not None:
                    self.bar.update(1)
                if len([r for r in job.by_source[name].values() if r in job.found]) == len(job.by_source[name]):
                    job.waiting.discard(name)
                    self._maybe_commit(job)

    def _file_done(self, name: str | None) -> None:
        """A file was decoded and all its items handed over: frames the index holds that it
        did not give are ``not-found``."""
        if name is None:
            return
        for job in self.job_of.get(name, ()):
            if name in job.waiting:
                missing = sum(1 for row in job.by_source[name].values() if row not in job.found)
                job.waiting.discard(name)
                if missing:
                    self.summary.skip("not-found", name, missing)
                    if self.bar is not None:
                        self.bar.update(missing)
                self._maybe_commit(job)

    def _give_up(self, name: str, reason: str) -> None:
        for job in self.job_of.get(name, ()):
            if name in job.waiting:
                job.waiting.discard(name)
                missing = sum(1 for row in job.by_source[name].values() if row not in job.found)
                self.summary.skip(reason, name, missing)
                if self.bar is not None:
                    self.bar.update(missing)

    def _maybe_commit(self, job: _Job) -> None:
        if job.waiting or id(job) in self.committed:
            return
        self.committed.add(id(job))
        regions = [job.found.get(row) for row in range(job.items)]
        block = shard_regions(regions, int(self.target["dim"]))
        if _commit_shard(self.index_dir, job.entry, block, self.target):
            self.summary.refreshed += 1
            self.summary.items += len(job.found)
            self.summary.regions += len(block.rows)
            self.summary.tombstoned += job.tombstoned


def _skipped_sources(source: Any) -> list[tuple[str, str]]:
    """(source, reason) of what a network source's last walk skipped, when it says."""
    report = getattr(source, "report", None)
    return [(str(p), str(r)) for p, r, *_ in getattr(report, "quarantined", []) or []]


def _moved(key: bytes, folder: Path) -> SourceSeal:
    """The seal of an archive that moved to ``folder``: names recorded relative to the old root
    open under the new one (the same tree, elsewhere)."""
    return SourceSeal(key, folder if folder.is_dir() else folder.parent)


def _commit_shard(index_dir: Path, entry: dict, block, target: dict) -> bool:
    """Write the shard ``entry`` again with ``block`` as its regions and commit it; False when
    the shard is no longer in the index (compaction or a repair replaced it meanwhile)."""
    with WriterLock(index_dir, wait=True):
        current = read_manifest(index_dir)
        shards = list(current["shards"])
        pos = next((i for i, s in enumerate(shards) if s["file"] == entry["file"] and s["sha256"] == entry["sha256"]), None)
        if pos is None:
            return False
        generation = int(current["generation"]) + 1
        number = int(entry["file"].split("-")[1].split(".")[0])
        final = index_dir / f"shard-{number:06d}.r{generation:06d}.h5"
        size, digest = rewrite_regions(index_dir / entry["file"], final, block, target["version"])
        new_entry = {k: v for k, v in shards[pos].items() if k not in ("region_part", FIELD)}
        new_entry.update(file=final.name, bytes=size, sha256=digest, regions_version=target["version"])
        shards[pos] = stamp(new_entry, index_dir)
        new = dict(current, shards=shards, regions_refresh=dict(target))
        new = commit_manifest(index_dir, new)
        remove_orphans(index_dir, new)
    return True


def _finish(index_dir: Path, target: dict) -> bool:
    """Make ``target`` the index's regions once every shard holds them; True when done."""
    with WriterLock(index_dir, wait=True):
        current = read_manifest(index_dir)
        if any(s.get("regions_version") != target["version"] for s in current["shards"]):
            return False
        new = dict(current)
        new.pop("regions_refresh", None)
        new["regions"] = {"version": target["version"], "dim": int(target["dim"]), "per_image": int(target["per_image"])}
        new["shards"] = [{k: v for k, v in s.items() if k != "regions_version"} for s in current["shards"]]
        new = commit_manifest(index_dir, new)
        remove_orphans(index_dir, new)
    return True
