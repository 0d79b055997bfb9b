"""Repair: make a damaged index whole again, losing as little as possible (``verify --repair``).

A damaged ``manifest.json`` falls back to the newest intact kept generation
(:mod:`medcbir.indexer.generations`). A damaged *shard* costs its own items only: :func:`repair`
drops the damaged shard from the live set (the shards after it are rewritten with dense ids, as
compaction does; a damaged FAISS file of an intact shard is written again from its embeddings; a
damaged trained FAISS file returns the index to exact search until it is trained again), and
records the dropped items' keys in the manifest (``dropped``): the next indexing run embeds them
again from their sources and reports how many.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np

from medcbir.errors import IndexCorrupt
from medcbir.indexer.compaction import TailRewriter, shard_size_of
from medcbir.indexer.generations import Recovery, fallback_manifest, newest_intact  # noqa: F401 - part of this module's API
from medcbir.indexer.keys import key_hash
from medcbir.indexer.fsutil import sha256_many
from medcbir.indexer.manifest import (MANIFEST, commit_manifest, deleted_ids, read_manifest,
                                      store_deleted, store_dropped)
from medcbir.indexer.staging import new_staging, publish
from medcbir.indexer.integrity import committed_records
from medcbir.indexer.lock import WriterLock
from medcbir.indexer import region_index

log = logging.getLogger(__name__)


def repair(index_dir: str | Path) -> Recovery:
    """Make the index whole again (``medcbir verify --repair``), losing as little as possible.

    An intact ``manifest.json`` is kept; a damaged one falls back to the newest intact kept
    generation (else the newest that parses). Damaged files of that generation are then
    dropped or rebuilt (:func:`drop_damaged`). Holds the writer lock; unreferenced files are
    removed by the next writer.

    Raises:
        IndexCorrupt: no manifest generation parses, or the tombstone file is damaged (which
            items were deleted is then unknown).
    """

    index_dir = Path(index_dir)
    with WriterLock(index_dir, wait=True):
        try:
            manifest = read_manifest(index_dir)
            rec = Recovery(manifest=manifest, source=MANIFEST, generation=int(manifest["generation"]))
        except IndexCorrupt:
            try:
                rec = newest_intact(index_dir, check="sha256")
            except IndexCorrupt:
                rec = newest_intact(index_dir, check="none")  # parses; its damaged files are dropped below
        manifest = dict(rec.manifest)
        if rec.recovered:
            manifest["generation"] = max([rec.generation, *rec.lost_generations])
        manifest = drop_damaged(index_dir, manifest, rec)
        if rec.changed:
            commit_manifest(index_dir, manifest)
        return rec


def damaged_files(index_dir: Path, manifest: dict) -> dict[str, str]:
    """Committed file name → what is wrong with it (missing, size, sha256), for every damaged one."""
    found, present = {}, []
    for rec in committed_records(manifest):
        path = index_dir / rec["file"]
        if not path.is_file():
            found[rec["file"]] = "committed file is missing"
        elif path.stat().st_size != int(rec["bytes"]):
            found[rec["file"]] = f"size {path.stat().st_size} differs from the committed {rec['bytes']} bytes"
        else:
            present.append(rec)
    for rec, digest in zip(present, sha256_many([index_dir / r["file"] for r in present])):
        if digest != rec["sha256"]:
            found[rec["file"]] = "checksum mismatch (sha256)"
    return found


def drop_damaged(index_dir: Path, manifest: dict, rec: Recovery) -> dict:
    """``manifest`` without its damaged files: damaged shards' items dropped (their keys kept
    in ``dropped``), the shards after the first damaged one rewritten with dense ids and fresh
    FAISS files; fills in ``rec``. Returns the manifest unchanged when nothing is damaged.

    Raises:
        IndexCorrupt: the tombstone file is damaged.
    """
    damaged = damaged_files(index_dir, manifest)
    if not damaged:
        return manifest
    for entry in manifest["shards"]:  # a shard whose codebook is damaged cannot be decoded: as damaged
        book = (entry.get("codebook") or {}).get("file")
        if book in damaged and entry["file"] not in damaged:
            damaged[entry["file"]] = f"its codebook {book}: {damaged[book]}"
    tombstones = manifest.get("deleted")
    if isinstance(tombstones, dict) and tombstones["file"] in damaged:
        raise IndexCorrupt(f"{tombstones['file']}: {damaged[tombstones['file']]}: which items were deleted is unknown; "
                           "restore it from a backup or index the archive into a new index")
    manifest = dict(manifest)
    dropped = manifest.get("dropped") or {}
    if dropped.get("file") in damaged:
        manifest["dropped"] = {"items": int(dropped.get("items", 0)), "keys": 0}  # the count is all that is left
        rec.rebuilt.append(dropped["file"])
    trained = manifest.get("trained") or {}
    if trained.get("file") in damaged:
        # The FAISS parts were encoded with it: back to exact search until trained again (the
        # writer trains a requested spec again when due; auto chooses again).
        requested = manifest.get("index_spec_requested", "auto")
        manifest.update(trained=None, index_spec="Flat" if requested == "auto" else requested, search_params={}, recall=None)
        manifest["shards"] = [{**s, "faiss": None} for s in manifest["shards"]]
        rec.rebuilt.append(trained["file"])
    storage = manifest.get("storage") or {}
    if (storage.get("codebook") or {}).get("file") in damaged:
        # new shards need a codebook: the next writer fits one again (compaction writes float16 until then)
        manifest["storage"] = {k: v for k, v in storage.items() if k != "codebook"}
        rec.rebuilt.append(storage["codebook"]["file"])
    manifest = region_index.drop_damaged(manifest, damaged, rec.rebuilt)  # stored again at the commit
    shards = manifest["shards"]
    first = next((i for i, s in enumerate(shards) if s["file"] in damaged or (s.get("faiss") or {}).get("file") in damaged), None)
    if first is None:
        return manifest
    keys = []
    deleted = deleted_ids(index_dir, manifest, verify=False)
    for entry in shards[first:]:
        if entry["file"] in damaged:
            rec.dropped_shards.append(entry["file"])
            ids = np.arange(entry["first_id"], entry["last_id"] + 1)
            live = ~np.isin(ids, deleted)  # tombstoned items are not missed (nor counted)
            rec.dropped_items += int(live.sum())
            keys.extend(_readable_keys(index_dir / entry["file"], live))
        elif entry.get("faiss") and entry["faiss"]["file"] in damaged:
            rec.rebuilt.append(entry["faiss"]["file"])
    manifest = _rewrite_tail(index_dir, manifest, first, set(rec.dropped_shards))
    if rec.dropped_items:
        store_dropped(index_dir, manifest, keys, rec.dropped_items)
    return manifest


def _readable_keys(path: Path, rows: np.ndarray) -> list[int]:
    """Key hashes of a damaged shard's items at ``rows`` (a mask), as far as they can still be
    read (else none)."""

    try:
        with h5py.File(path, "r") as f:
            sops, frames = f["meta"]["sop_instance_uid"][...][rows], f["meta"]["frame"][...][rows]
        return [key_hash(s.decode("utf-8"), int(fr)) for s, fr in zip(sops, frames)]
    except Exception:  # noqa: BLE001 - a damaged file may fail in any way; the count is kept anyway
        return []


def _rewrite_tail(index_dir: Path, manifest: dict, first: int, damaged: set[str]) -> dict:
    """The shards from ``first`` on rewritten without the ``damaged`` ones (live items only,
    dense ids, FAISS files from the embeddings), as compaction rewrites a tail."""
    shards = manifest["shards"]
    deleted = deleted_ids(index_dir, manifest, verify=False)
    first_id = int(shards[first]["first_id"])
    staging = new_staging(index_dir)
    try:
        rewriter = TailRewriter(index_dir, staging, manifest, first_id, shard_size_of(manifest))
        for entry in shards[first:]:
            if entry["file"] not in damaged:
                rewriter.add_shard(entry, deleted)
        rewriter.flush()
        out = dict(manifest)
        out["next_shard"] = publish(staging, index_dir, rewriter.entries, int(manifest["next_shard"]))
        out["shards"] = list(shards[:first]) + rewriter.entries
        out["next_id"] = int(rewriter.next_id)
        store_deleted(index_dir, out, deleted[deleted < first_id])
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)
