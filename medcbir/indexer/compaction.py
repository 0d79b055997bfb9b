"""Online compaction: small shards merged into full ones, tombstoned items dropped.

A growing index (the Orthanc plugin commits every few seconds) accumulates small shards,
and deletes leave tombstones. Compaction rewrites the tail of the shard list from the first
shard that is small or holds a tombstone: shards before it keep their files and ids; the
rewritten ones are filled to ``shard_size`` with only live items, renumbered densely (ids are
positions, docs/design.md). It works on a snapshot without the writer lock (:mod:`.staging`) and
commits by one manifest commit, so writers keep committing and readers keep searching their
generation meanwhile; shards committed during the rewrite are rewritten under the lock (they
are the few newest), and tombstones set meanwhile are carried over to the new ids.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from medcbir.errors import IndexCorrupt

from medcbir.indexer import faiss_index
from medcbir.indexer.checksum import stamp
from medcbir.indexer.lock import WriterLock
from medcbir.indexer.manifest import commit_manifest, deleted_ids, read_manifest, store_deleted
from medcbir.indexer.shard import (ShardRegions, codebook_entry, concat_columns, index_codec, read_columns, read_embeddings, read_regions,
                                   read_source_stats, read_coded, shard_dtype, write_shard)
from medcbir.indexer.transform_codec import is_transform
from medcbir.indexer.staging import Overtaken, new_staging, publish, same_prefix
from medcbir.indexer.writer import remove_orphans

# A shard below this fraction of the shard size counts as small.
MIN_FILL = 0.5
# Compaction is due when this many small shards wait, or this fraction of items is tombstoned.
DUE_SMALL_SHARDS = 8
DUE_DELETED_FRACTION = 0.10


def shard_size_of(manifest: dict, shard_size: int | None = None) -> int:
    return int(shard_size or manifest.get("shard_size") or max((s["items"] for s in manifest["shards"]), default=4096))


def plan_start(manifest: dict, deleted: np.ndarray, shard_size: int) -> int | None:
    """Index of the first shard to rewrite, or None when nothing would change."""
    shards = manifest["shards"]
    for i, s in enumerate(shards):
        has_tombstone = bool(np.any((deleted >= s["first_id"]) & (deleted <= s["last_id"])))
        small = s["items"] < MIN_FILL * shard_size and i < len(shards) - 1  # the last may be filling
        if has_tombstone or small:
            return i
    return None


def compaction_due(manifest: dict, shard_size: int | None = None) -> bool:
    """Enough small shards or tombstones that a compaction is worth its I/O."""
    size = shard_size_of(manifest, shard_size)
    small = sum(1 for s in manifest["shards"][:-1] if s["items"] < MIN_FILL * size)
    deleted = manifest.get("deleted") or []
    n_deleted = deleted["count"] if isinstance(deleted, dict) else len(deleted)
    items = int(manifest.get("next_id", 0))
    return small >= DUE_SMALL_SHARDS or (items > 0 and n_deleted / items >= DUE_DELETED_FRACTION)


class TailRewriter:
    """Writes live items of old shards into full new shards in a staging folder, in the index's
    storage (a ``tc*`` storage whose codebook is lost to a repair writes float16). A new shard made
    of one old shard coded with the index's codebook keeps its rows' codes and its range as they
    are (tombstoned rows dropped); rows merged from several shards (each with its own range) are
    decoded and coded again under the merged range."""

    def __init__(self, index_dir: Path, staging: Path, manifest: dict, first_id: int, size: int) -> None:
        self.index_dir, self.staging, self.manifest, self.size = index_dir, staging, manifest, size
        self.next_id = first_id
        self.entries: list[dict] = []
        self.kept_old_ids: list[np.ndarray] = []  # old id of each new item, in new-id order
        self._cols: list[dict] = []
        self._emb: list[np.ndarray] = []
        self._stats: dict[bytes, tuple[int, int]] = {}
        self._regions: list[ShardRegions] = []  # rows = position among the pending items
        self._pending = 0
        self._raw: list[tuple | None] = []  # each part's (row codes, range) when coded with the index's codebook
        self.dtype = shard_dtype(manifest)
        self.codec = index_codec(index_dir, manifest) if is_transform(self.dtype) else None
        if is_transform(self.dtype) and self.codec is None:
            self.dtype = "float16"
        self._base = None
        if manifest.get("trained"):
            import faiss

            self._base, _ = faiss_index.parts(faiss.read_index(str(index_dir / manifest["trained"]["file"])))

    def add_shard(self, entry: dict, deleted: np.ndarray) -> None:
        path = self.index_dir / entry["file"]
        ids = np.arange(entry["first_id"], entry["last_id"] + 1)
        keep = np.nonzero(~np.isin(ids, deleted))[0]
        if not len(keep):
            return
        cols = {k: v[keep] for k, v in read_columns(path).items()}
        self._cols.append(cols)
        coded = read_coded(path) if self.codec is not None else None
        if coded is not None and coded[0] == self.codec.file:
            _, stored, value_range = coded
            self._raw.append((stored[keep], value_range))
            self._emb.append(self.codec.decode(stored[keep], value_range))
        else:
            self._raw.append(None)
            self._emb.append(read_embeddings(path)[keep])
        kept_sources = set(cols["source"].tolist()) if "source" in cols else set()
        self._stats.update({n: st for n, st in read_source_stats(path).items() if n in kept_sources})
        if manifest_regions := self.manifest.get("regions"):
            regions = read_regions(path)
            if regions is None:
                raise IndexCorrupt(f"{entry['file']}: the index stores regions but this shard has none")
            # Regions of kept items follow them, renumbered to their row among the pending items.
            new_row = np.full(len(ids), -1, dtype=np.int64)
            new_row[keep] = self._pending + np.arange(len(keep))
            regions = regions.take(new_row[regions.rows] >= 0)
            self._regions.append(ShardRegions(new_row[regions.rows], regions.boxes, regions.descriptors.reshape(-1, int(manifest_regions["dim"]))))
        self.kept_old_ids.append(ids[keep])
        self._pending += len(keep)
        # Flushing only between old shards keeps each source's frames in one shard.
        if self._pending >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        cols, emb = concat_columns(self._cols), np.concatenate(self._emb)
        ids = np.arange(self.next_id, self.next_id + len(emb), dtype=np.int64)
        name = f"staged-{len(self.entries):06d}"
        regions, version = None, ""
        if self.manifest.get("regions"):
            regions = ShardRegions(*(np.concatenate(c) for c in zip(*self._regions))) if self._regions \
                else ShardRegions.empty(int(self.manifest["regions"]["dim"]))
            version = self.manifest["regions"]["version"]
        stored = self._raw[0] if len(self._raw) == 1 else None  # one coded shard's rows: as they are
        nbytes, digest = write_shard(self.staging / f"{name}.h5", ids, emb, cols, self.manifest["encoder"], self._stats, regions, version,
                                     dtype=self.dtype, codec=self.codec, stored=stored)
        entry = {"file": f"{name}.h5", "items": len(emb), "bytes": nbytes, "sha256": digest,
                 "first_id": int(ids[0]), "last_id": int(ids[-1]), "faiss": None}
        if self.codec is not None:
            entry["codebook"] = codebook_entry(self.manifest["storage"]["codebook"])
        if self._base is not None:
            entry["faiss"] = stamp(faiss_index.write_shard_part(self._base, ids, emb, self.staging / name), self.staging)
        self.entries.append(stamp(entry, self.staging))
        self.next_id += len(emb)
        self._cols, self._emb, self._stats, self._regions, self._pending, self._raw = [], [], {}, [], 0, []


def compact(index_dir: str | Path, shard_size: int | None = None, force: bool = True) -> dict:
    """Merge small shards and drop tombstoned items (a new generation; ids renumbered densely).

    Args:
        index_dir: the index folder.
        shard_size: target items per shard (default: the largest committed shard).
        force: compact whenever anything would change (False: only when :func:`compaction_due`).

    Returns:
        ``{"items", "removed", "shards", "rewritten", "generation"}`` of the new generation
        (``rewritten`` = shards replaced; 0 when there was nothing to do), or with
        ``"skipped"`` when another maintenance job committed first.
    """

    index_dir = Path(index_dir)
    snapshot = read_manifest(index_dir)
    size = shard_size_of(snapshot, shard_size)
    deleted = deleted_ids(index_dir, snapshot)
    start = plan_start(snapshot, deleted, size)
    if start is None or (not force and not compaction_due(snapshot, shard_size)):
        return {"items": int(snapshot["next_id"]), "removed": 0, "shards": len(snapshot["shards"]), "rewritten": 0,
                "generation": int(snapshot["generation"])}
    staging = new_staging(index_dir)
    try:
        first_id = int(snapshot["shards"][start]["first_id"])
        rewriter = TailRewriter(index_dir, staging, snapshot, first_id, size)
        for entry in snapshot["shards"][start:]:
            rewriter.add_shard(entry, deleted)
        with WriterLock(index_dir, wait=True):
            current = read_manifest(index_dir)
            if not same_prefix(snapshot, current):
                raise Overtaken
            now_deleted = deleted_ids(index_dir, current)
            # Shards committed during the rewrite: rewritten here too (ids shift).
            for entry in current["shards"][len(snapshot["shards"]):]:
                rewriter.add_shard(entry, now_deleted)
            rewriter.flush()
            old_ids = np.concatenate(rewriter.kept_old_ids) if rewriter.kept_old_ids else np.zeros(0, np.int64)
            # Tombstones set during the rewrite on items it kept move to those items' new ids.
            late = np.intersect1d(np.setdiff1d(now_deleted, deleted), old_ids)
            before = now_deleted[now_deleted < first_id]
            carried = first_id + np.searchsorted(old_ids, late)
            new = dict(current)
            new["next_shard"] = publish(staging, index_dir, rewriter.entries, int(current["next_shard"]))
            new["shards"] = list(current["shards"][:start]) + rewriter.entries
            new["next_id"] = int(rewriter.next_id)
            store_deleted(index_dir, new, np.union1d(before, carried))
            new = commit_manifest(index_dir, new)
            # Replaced files stay while a kept generation references them (manifest recovery).
            remove_orphans(index_dir, new)
        removed = int(current["next_id"]) - int(new["next_id"])
        return {"items": int(new["next_id"]), "removed": removed, "shards": len(new["shards"]),
                "rewritten": len(current["shards"]) - start, "generation": int(new["generation"])}
    except Overtaken:
        return {"items": int(snapshot["next_id"]), "removed": 0, "shards": len(snapshot["shards"]), "rewritten": 0,
                "generation": int(snapshot["generation"]), "skipped": "another maintenance job committed first"}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
