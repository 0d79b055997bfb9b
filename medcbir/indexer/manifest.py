"""The manifest: the single commit point of an index.

``INDEX/manifest.json`` lists everything that is committed; a file not named in it does not
exist for readers (a crash leaves at most orphan temporary files or an orphan shard, which
the next writer removes). It is replaced atomically (temporary file, fsync, rename, fsync
folder), and its ``generation`` grows by one at every commit; a reader keeps working on the
generation it opened.

History: before ``manifest.json`` is replaced, the generation it held is kept as
``manifest-GGGGGG.json`` (a hard link: no copy), the last :data:`KEEP_GENERATIONS` of them;
the files they reference are kept too (:func:`retained_files`), so a damaged
``manifest.json`` falls back to the newest intact generation (:mod:`~medcbir.indexer.recovery`).

Fields::

    format, version         "medcbir-index", 1
    generation              commit counter
    encoder                 {fingerprint, preprocessing, dim, source}
    metric                  "ip" (inner product on L2-normalised embeddings = cosine)
    index_spec              FAISS factory string in use ("Flat", "IVF1024,PQ64x4fs,Refine(Flat)", ...)
    index_spec_requested    what the user asked for ("auto" or a factory string)
    trained                 {file, bytes, sha256, xxh3} of the trained (empty) FAISS index, or null
    search_params           {nprobe, k_factor, ...} defaults for approximate specs
    shards                  [{file, items, bytes, sha256, xxh3, first_id, last_id, faiss}] in id order;
                            faiss = {file, bytes, sha256, xxh3} of the shard's FAISS file, or null;
                            xxh3 = the fast checksum checked at open (checksum.py; absent in
                            entries written before it existed: those are checked by sha256)
    deleted                 sorted tombstoned ids, or {file, bytes, sha256, count} when large
    shard_size              items per full shard (the writer's; compaction fills shards to it)
    next_id                 the id the next item gets (ids are dense: 0 .. next_id-1)
    next_shard              the number the next shard file gets
    key_file                pseudonym key file when not INDEX/pseudonym.key (else null)
    archive_root            the folder file sources are recorded relative to, sealed with the
                            archive key (older indexes: the plain absolute path)
    region_search           an index with regions: {format, version, dim, regions, ivf} of its stored
                            region search structure (region_index.py); ivf = {file, bytes, sha256,
                            xxh3, nlist, nprobe, at_regions} or null; each shard entry then has
                            region_part = {file, bytes, sha256, xxh3, count, ivf}
    regions_refresh         while a region refresh is under way (region_refresh.py): the
                            {version, dim, per_image} it writes; the shard entries it has done
                            say regions_version (their file is then shard-N.rG.h5)
    storage                 how shards store embeddings: {requested, dtype, ...what auto measured,
                            chain: the chain rule's measurement, codebook: {file, bytes, sha256, xxh3,
                            dtype, bits, components, code_bytes, fit_items} of the codebook new
                            tc4/tc6/tc8 shards are coded with}; a shard entry coded with a codebook
                            names it: codebook = {file, bytes, sha256, xxh3}
    dropped                 optional {file, bytes, sha256, xxh3, items, keys}: items a repair
                            dropped with their damaged shard, and a .npy of their key hashes
                            (``keys`` of them could be read); the next indexing run re-embeds
                            them from their sources, reports how many, and removes the record
    created, updated        ISO-8601 UTC
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from medcbir.errors import IndexCorrupt, IndexNotFound
from medcbir.indexer.checksum import fast_checksum
from medcbir.indexer.fsutil import commit_file, sha256_file, tmp_name, write_json_atomic
from medcbir.indexer import region_index

FORMAT = "medcbir-index"
VERSION = 1
MANIFEST = "manifest.json"
# Above this many tombstones the list moves to its own checksummed .npy file.
INLINE_DELETED_MAX = 10_000
# Previous generations kept beside manifest.json (and every file they reference).
KEEP_GENERATIONS = 3
HISTORY = re.compile(r"^manifest-(\d{6,})\.json$")

log = logging.getLogger(__name__)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_manifest(encoder_info: dict, index_spec_requested: str, key_file: str | None = None) -> dict:
    stamp = now()
    return {
        "format": FORMAT,
        "version": VERSION,
        "generation": 0,
        "encoder": dict(encoder_info),
        "metric": "ip",
        "index_spec": "Flat",
        "index_spec_requested": index_spec_requested,
        "trained": None,
        "search_params": {},
        "shards": [],
        "deleted": [],
        "next_id": 0,
        "next_shard": 1,
        "key_file": key_file,
        "created": stamp,
        "updated": stamp,
    }


def manifest_path(index_dir: Path) -> Path:
    return Path(index_dir) / MANIFEST


def history_path(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / f"manifest-{int(generation):06d}.json"


def history(index_dir: Path) -> list[tuple[int, Path]]:
    """(generation, path) of the kept previous manifests, newest first."""
    found = []
    for path in Path(index_dir).iterdir():
        match = HISTORY.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def read_manifest(index_dir: str | Path) -> dict:
    """The committed manifest of ``index_dir``.

    Raises:
        IndexNotFound: no folder or no manifest.
        IndexCorrupt: the manifest is not valid JSON or not a medcbir index.
    """
    path = manifest_path(Path(index_dir))
    if not Path(index_dir).is_dir():
        raise IndexNotFound(f"index folder {index_dir} does not exist")
    if not path.is_file():
        if history(Path(index_dir)):
            raise IndexCorrupt(f"{path}: manifest is missing (previous generations are kept: `medcbir verify --repair`)")
        raise IndexNotFound(f"{index_dir} is not a medcbir index (no {MANIFEST})")
    return parse_manifest(path)


def committed_generation(index_dir: str | Path) -> int | None:
    """The committed generation of an index, or None while it has no readable manifest."""
    try:
        return int(read_manifest(index_dir)["generation"])
    except (IndexNotFound, IndexCorrupt, OSError, KeyError, TypeError, ValueError):
        return None


def parse_manifest(path: Path) -> dict:
    """A manifest file, validated.

    Raises:
        IndexCorrupt: not valid JSON or not a medcbir index manifest.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexCorrupt(f"{path}: not a medcbir index manifest")
    if data.get("version") != VERSION:
        raise IndexCorrupt(f"{path}: manifest version {data.get('version')} is not supported (expected {VERSION})")
    return data


def commit_manifest(index_dir: Path, manifest: dict) -> dict:
    """Bump the generation and atomically replace ``manifest.json``; returns the new manifest.

    An index with regions gets its region search structure brought up to date first
    (:func:`medcbir.indexer.region_index.maintain`: files of the generation being committed).

    The generation being replaced is kept as ``manifest-GGGGGG.json`` first (a crash between
    the two steps leaves a history entry equal to the current manifest: harmless).
    """
    index_dir = Path(index_dir)
    manifest = region_index.maintain(index_dir, dict(manifest))  # an index with regions: their search structure
    manifest["generation"] = int(manifest.get("generation", 0)) + 1
    manifest["updated"] = now()
    _keep_current(index_dir)
    write_json_atomic(manifest_path(index_dir), manifest, hook="manifest-rename")
    _prune_history(index_dir, int(manifest["generation"]))
    return manifest


def _keep_current(index_dir: Path) -> None:
    current = manifest_path(index_dir)
    try:
        generation = int(parse_manifest(current)["generation"])
    except (IndexCorrupt, OSError, KeyError, ValueError, TypeError):
        return  # nothing intact to keep (first commit, or a repair over a damaged manifest)
    kept = history_path(index_dir, generation)
    tmp = tmp_name(kept)
    try:
        os.link(current, tmp)  # the folder fsync of the manifest commit that follows makes it durable
    except OSError:  # a file system without hard links: a copy
        import shutil

        shutil.copyfile(current, tmp)
    os.replace(tmp, kept)
    # A crash after this step and before the new manifest's rename leaves `kept` a hard link of the
    # current manifest; keeping the same generation again links `tmp` to that very file, and a
    # rename between two links of one file does nothing (POSIX): the temporary name would stay.
    tmp.unlink(missing_ok=True)


def _prune_history(index_dir: Path, generation: int) -> None:
    for gen, path in history(index_dir):
        # Newer than the commit (left by a repair to an older generation) or beyond the window.
        if gen >= generation or gen < generation - KEEP_GENERATIONS:
            path.unlink(missing_ok=True)


def retained_files(index_dir: Path, manifest: dict | None) -> set[str]:
    """Files to keep: those of ``manifest`` and of every kept previous generation."""
    keep = referenced_files(manifest) if manifest else {MANIFEST}
    for _, path in history(Path(index_dir)):
        keep.add(path.name)
        try:
            keep |= referenced_files(parse_manifest(path))
        except (IndexCorrupt, OSError):
            continue
    return keep


def deleted_ids(index_dir: Path, manifest: dict, verify: bool = True) -> np.ndarray:
    """Sorted int64 tombstoned ids of a manifest (inline list or checksummed .npy file)."""
    deleted = manifest.get("deleted") or []
    if isinstance(deleted, list):
        return np.asarray(sorted(deleted), dtype=np.int64)
    path = Path(index_dir) / deleted["file"]
    if not path.is_file():
        raise IndexCorrupt(f"{path.name}: tombstone file is missing")
    if verify and (path.stat().st_size != deleted["bytes"] or sha256_file(path) != deleted["sha256"]):
        raise IndexCorrupt(f"{path.name}: checksum mismatch (tombstone file)")
    return np.sort(np.load(path, allow_pickle=False).astype(np.int64))


def store_deleted(index_dir: Path, manifest: dict, ids: np.ndarray) -> None:
    """Put ``ids`` into ``manifest['deleted']`` (inline, or a new .npy file when large)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size <= INLINE_DELETED_MAX:
        manifest["deleted"] = [int(i) for i in ids]
        return
    final = Path(index_dir) / f"tombstones-{int(manifest.get('generation', 0)) + 1:06d}.npy"
    tmp = tmp_name(final)
    with open(tmp, "wb") as fh:
        np.save(fh, ids, allow_pickle=False)
    commit_file(tmp, final)
    manifest["deleted"] = {"file": final.name, "bytes": final.stat().st_size, "sha256": sha256_file(final), "count": int(ids.size),
                           "xxh3": fast_checksum(final)}


def dropped_keys(index_dir: Path, manifest: dict) -> np.ndarray:
    """uint64 key hashes of the items a repair dropped (empty when none or unknown)."""
    record = manifest.get("dropped") or {}
    path = Path(index_dir) / record["file"] if record.get("file") else None
    if path is None or not path.is_file():
        return np.zeros(0, dtype=np.uint64)
    return np.load(path, allow_pickle=False).astype(np.uint64)


def store_dropped(index_dir: Path, manifest: dict, keys: np.ndarray, items: int) -> None:
    """Record in ``manifest`` that ``items`` were dropped by a repair (``keys``: the hashes of
    those whose key could still be read), adding to a record not yet settled."""
    earlier = manifest.get("dropped") or {}
    keys = np.union1d(dropped_keys(index_dir, manifest), np.asarray(keys, dtype=np.uint64))
    final = Path(index_dir) / f"dropped-{int(manifest.get('generation', 0)) + 1:06d}.npy"
    tmp = tmp_name(final)
    with open(tmp, "wb") as fh:
        np.save(fh, keys, allow_pickle=False)
    commit_file(tmp, final)
    manifest["dropped"] = {"file": final.name, "bytes": final.stat().st_size, "sha256": sha256_file(final),
                           "xxh3": fast_checksum(final), "items": int(earlier.get("items", 0)) + int(items), "keys": int(keys.size)}


def codebook_records(manifest: dict) -> list[dict]:
    """The record of every transform-coding codebook a manifest commits (the one new shards are
    coded with, and each one a committed shard names), once each."""
    out: dict[str, dict] = {}
    current = (manifest.get("storage") or {}).get("codebook")
    for rec in [current] + [s.get("codebook") for s in manifest.get("shards", [])]:
        if isinstance(rec, dict) and rec.get("file") and rec["file"] not in out:
            out[rec["file"]] = rec
    return list(out.values())


def referenced_files(manifest: dict) -> set[str]:
    """Every file name a manifest commits (shards, their FAISS files, codebooks, trained params, tombstones)."""
    names = {MANIFEST}
    for shard in manifest.get("shards", []):
        names.add(shard["file"])
        if shard.get("faiss"):
            names.add(shard["faiss"]["file"])
    names.update(r["file"] for r in codebook_records(manifest))
    if manifest.get("trained"):
        names.add(manifest["trained"]["file"])
    for extra in ("deleted", "dropped", "lists"):
        if isinstance(manifest.get(extra), dict) and manifest[extra].get("file"):
            names.add(manifest[extra]["file"])
    names.update(r["file"] for r in region_index.records(manifest))
    return names
