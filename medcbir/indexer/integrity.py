"""Whether an index's committed files are intact: existence, size and checksum of each.

Every file a manifest commits (shards, their FAISS files, trained parameters, tombstones) is
recorded with its size, sha256 and, for newer indexes, a fast checksum (XXH3-64,
:mod:`~medcbir.indexer.checksum`). Opening an index (:class:`~medcbir.indexer.IndexStore`) and
recovering one (:mod:`~medcbir.indexer.recovery`) both check them here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medcbir.errors import ConfigError, IndexCorrupt
from medcbir.indexer.checksum import FIELD, fast_checksum
from medcbir.indexer.deferred_checks import DEFER_BYTES, DeferredChecks
from medcbir.indexer.fsutil import sha256_file
from medcbir.indexer.manifest import codebook_records
from medcbir.indexer.region_index import records as region_records

VERIFY_MODES = ("checksums", "sha256", "sizes", "none")


def check_files(index_dir: Path, manifest: dict, mode: str = "checksums") -> None:
    """Check that every committed file exists with its size and (``checksums``) its sha256.

    Raises:
        IndexCorrupt: naming the first broken file.
    """
    pending, _ = start_checks(index_dir, manifest, mode)
    finish_checks(pending)


def start_checks(index_dir: Path, manifest: dict, mode: str, *, defer: bool = False) -> tuple[list, DeferredChecks | None]:
    """Size checks now, FAISS and tombstone files hashed now, shards and their codes hashed in
    background threads.

    ``checksums`` checks each file's fast checksum (XXH3-64, :mod:`~medcbir.indexer.checksum`)
    where the manifest records one and its sha256 otherwise (entries of older indexes);
    ``sha256`` checks every sha256 (what ``verify`` does, plus consistency checks).

    Returns the pending (name, expected, future) of the shards, for :func:`finish_checks`;
    hashing overlaps with loading the index (both hashes release the GIL). With ``defer`` and
    more than :data:`~medcbir.indexer.deferred_checks.DEFER_BYTES` of shard files, nothing is
    pending: the shards' files are checked by the returned
    :class:`~medcbir.indexer.deferred_checks.DeferredChecks` (in the background, and before an
    answer uses a shard); otherwise that second value is None.
    """
    if mode not in VERIFY_MODES:
        raise ConfigError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {mode!r}")
    if mode == "none":
        return [], None
    records = committed_records(manifest)
    for rec in records:
        path = index_dir / rec["file"]
        if not path.is_file():
            raise IndexCorrupt(f"{rec['file']}: committed file is missing from {index_dir}")
        if path.stat().st_size != int(rec["bytes"]):
            raise IndexCorrupt(f"{rec['file']}: size {path.stat().st_size} differs from the committed {rec['bytes']} bytes")
    if mode == "sizes":
        return [], None
    fast = mode == "checksums"
    # FAISS files are parsed by FAISS's C++ readers and tombstones decide what search returns:
    # check them before anything reads them. Shards (HDF5) and standalone codes (``.codes.npy``:
    # numpy reads them, a damaged code can only misplace an item, and the load that reads them
    # is checked against the manifest) are hashed in background threads while the index loads;
    # a mismatch fails the open all the same (finish_checks), naming the file.
    background = [r for r in records if r["file"].endswith((".h5", ".codes.npy"))]
    for rec in records:
        if rec["file"].endswith((".h5", ".codes.npy")):
            continue
        expected, digest = _expected(rec, fast), _hasher(rec, fast)(index_dir / rec["file"])
        if digest != expected:
            raise IndexCorrupt(_mismatch(rec["file"], digest, expected, _kind(rec, fast)))
    deferred = None
    number = _shard_numbers(manifest)
    later = [r for r in background if r["file"] in number]
    if defer and sum(int(r["bytes"]) for r in later) > DEFER_BYTES:
        files = sorted(((number[r["file"]], r["file"], _expected(r, fast), _kind(r, fast), _hasher(r, fast)) for r in later),
                       key=lambda f: (f[0], not f[1].endswith(".codes.npy")))
        deferred = DeferredChecks(index_dir, files, _mismatch)
        background = [r for r in background if r["file"] not in number]
    shards = sorted(background, key=lambda r: not r["file"].endswith(".codes.npy"))  # codes first: the load reads them first
    if not shards:
        return [], deferred
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(shards), os.cpu_count() or 2)))
    pending = [(rec["file"], _expected(rec, fast), _kind(rec, fast), pool.submit(_hasher(rec, fast), index_dir / rec["file"]))
               for rec in shards]
    pool.shutdown(wait=False)
    return pending, deferred


def _shard_numbers(manifest: dict) -> dict[str, int]:
    """Each shard file's (and its FAISS code file's) position in the manifest's shard list."""
    out = {}
    for i, shard in enumerate(manifest.get("shards", [])):
        out[shard["file"]] = i
        if shard.get("faiss"):
            out[shard["faiss"]["file"]] = i
    return out


def _kind(rec: dict, fast: bool) -> str:
    return FIELD if fast and rec.get(FIELD) else "sha256"


def _expected(rec: dict, fast: bool) -> str:
    return rec[_kind(rec, fast)]


def _hasher(rec: dict, fast: bool):
    return fast_checksum if _kind(rec, fast) == FIELD else sha256_file


def finish_checks(pending: list) -> None:
    """Wait for background shard hashes; raise for the first mismatch."""
    for name, expected, kind, future in pending:
        digest = future.result()
        if digest != expected:
            for *_, other in pending:
                other.cancel()
            raise IndexCorrupt(_mismatch(name, digest, expected, kind))


def _mismatch(name: str, digest: str, expected: str, kind: str = "sha256") -> str:
    return f"{name}: checksum mismatch ({kind} {digest[:12]}… != committed {expected[:12]}…)"


def committed_records(manifest: dict) -> list[dict]:
    """The manifest record ``{file, bytes, sha256[, xxh3]}`` of every checksummed file it commits."""
    out = []
    for shard in manifest.get("shards", []):
        out.append(shard)
        if shard.get("faiss"):
            out.append(shard["faiss"])
    for extra in (manifest.get("trained"), manifest.get("deleted"), manifest.get("dropped"), manifest.get("lists")):
        if isinstance(extra, dict) and extra.get("file"):
            out.append(extra)
    out.extend(codebook_records(manifest))
    out.extend(region_records(manifest))
    return out


def committed_entries(manifest: dict) -> list[tuple[str, int, str]]:
    """(file, bytes, sha256) of every checksummed file a manifest commits."""
    return [(r["file"], int(r["bytes"]), r["sha256"]) for r in committed_records(manifest)]
