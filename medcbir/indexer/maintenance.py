"""Index maintenance: tombstone deletes and full verification (compaction: :mod:`.compaction`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from medcbir.errors import IndexCorrupt, MedcbirError
from medcbir.indexer import faiss_index, region_index
from medcbir.indexer.checksum import FIELD, fast_checksum
from medcbir.indexer.compaction import compact  # noqa: F401 - part of this module's API
from medcbir.indexer.lock import WriterLock
from medcbir.indexer.manifest import commit_manifest, deleted_ids, read_manifest, store_deleted
from medcbir.indexer.shard import Decoder
from medcbir.indexer.integrity import committed_entries, committed_records
from medcbir.indexer.fsutil import sha256_many
from medcbir.indexer.writer import remove_orphans
from medcbir.indexer.writer import key_hash


def _matching_ids(index_dir: Path, manifest: dict, wanted: dict[str, set[str]]) -> np.ndarray:
    found = []
    for entry in manifest["shards"]:
        with h5py.File(index_dir / entry["file"], "r") as f:
            ids = f["ids"][...]
            hit = np.zeros(len(ids), dtype=bool)
            for column, values in wanted.items():
                if values:
                    col = f["meta"][column][...]
                    # No dtype=col.dtype: that would truncate longer UIDs into false matches.
                    hit |= np.isin(col, np.array([v.encode("utf-8") for v in values]))
            found.append(ids[hit])
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def delete(index_dir: str | Path, series=(), study=(), sop=()) -> int:
    """Tombstone every item of the given series / studies / SOP instances (a new generation).

    Search skips tombstoned items; :func:`compact` removes them from the shards.

    Args:
        index_dir: the index folder.
        series: SeriesInstanceUIDs.
        study: StudyInstanceUIDs.
        sop: SOPInstanceUIDs.

    Returns:
        how many items were newly tombstoned.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    with WriterLock(index_dir, wait=True):
        manifest = read_manifest(index_dir)
        remove_orphans(index_dir, manifest)
        wanted = {"series_instance_uid": set(series), "study_instance_uid": set(study), "sop_instance_uid": set(sop)}
        hits = _matching_ids(index_dir, manifest, wanted)
        before = deleted_ids(index_dir, manifest)
        new = np.setdiff1d(hits, before)
        if new.size:
            manifest = dict(manifest)
            store_deleted(index_dir, manifest, np.union1d(before, new))
            commit_manifest(index_dir, manifest)
        return int(new.size)


@dataclass
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        ok: no problem found.
        items: committed items (tombstoned included).
        shards: committed shards.
        deleted: tombstoned items.
        problems: one line per problem, each starting with the file concerned.
    """

    ok: bool = True
    items: int = 0
    shards: int = 0
    deleted: int = 0
    generation: int = 0
    index_spec: str = ""
    problems: list[str] = field(default_factory=list)
    #: items a repair dropped that no indexing run has embedded again yet
    dropped: int = 0
    #: measured recall@10 of the approximate index on its own items (None: exact or not measured)
    recall_at_10: float | None = None
    target_recall: float | None = None
    search_params: dict = field(default_factory=dict)
    #: the manifest's encoder record (fingerprint, preprocessing, dim, source; a user encoder's spec)
    encoder: dict = field(default_factory=dict)
    #: the region index (None: the index stores no regions): recipe, regions, per image, and bytes
    #: per image of the regions beside those of the slice embeddings and metadata
    regions: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def verify(index_dir: str | Path) -> VerifyReport:
    """Recompute every checksum and check shard/manifest consistency.

    Checks: each committed file exists with its size and whole-file sha256; each shard's
    encoder fingerprint, dim and metric equal the manifest's; its embeddings match their
    recorded sha256 and shape; its ids are exactly ``first_id..last_id`` and every column
    has one row per id; ids are dense across shards and end at ``next_id``; no item key
    ``(sop_instance_uid, frame)`` appears twice among live items; FAISS files hold each shard's vectors;
    tombstones are valid ids; the stored region search structure matches the shards' regions
    (:func:`medcbir.indexer.region_index.check`).

    Raises:
        IndexNotFound: no index there (every other finding goes into ``problems``).
    """
    index_dir = Path(index_dir)
    try:
        manifest = read_manifest(index_dir)
    except IndexCorrupt as exc:
        return VerifyReport(ok=False, problems=[str(exc)])
    report = VerifyReport(items=int(manifest["next_id"]), shards=len(manifest["shards"]),
                          generation=int(manifest["generation"]), index_spec=manifest["index_spec"],
                          dropped=int((manifest.get("dropped") or {}).get("items", 0)))
    measured = manifest.get("recall") or {}
    report.recall_at_10 = measured.get("recall_at_10")
    report.target_recall = measured.get("target", manifest.get("target_recall"))
    report.search_params = dict(manifest.get("search_params") or {})
    report.encoder = dict(manifest.get("encoder") or {})
    problems = report.problems
    entries = committed_entries(manifest)
    present = [(n, s, h) for n, s, h in entries if (index_dir / n).is_file()]
    for name, size, _ in entries:
        path = index_dir / name
        if not path.is_file():
            problems.append(f"{name}: committed file is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name}: size {path.stat().st_size} differs from the committed {size} bytes")
    for (name, size, expected), digest in zip(present, sha256_many([index_dir / n for n, _, _ in present])):
        if digest != expected and (index_dir / name).stat().st_size == size:
            problems.append(f"{name}: checksum mismatch (sha256 {digest[:12]}… != committed {expected[:12]}…)")
    for rec in committed_records(manifest):
        path = index_dir / rec["file"]
        if rec.get(FIELD) and path.is_file() and path.stat().st_size == int(rec["bytes"]) and fast_checksum(path) != rec[FIELD]:
            problems.append(f"{rec['file']}: checksum mismatch ({FIELD} differs from the committed {rec[FIELD]})")
    broken = {p.split(":")[0] for p in problems}
    try:
        deleted = deleted_ids(index_dir, manifest, verify=False)
    except MedcbirError:
        deleted = np.zeros(0, dtype=np.int64)  # reported below
    fingerprint = manifest["encoder"]["fingerprint"]
    dim = int(manifest["encoder"]["dim"])
    expected_first = 0
    keys: set = set()
    sizes = {"regions": 0, "region_bytes": 0, "slice_bytes": 0}
    for entry in manifest["shards"]:
        name = entry["file"]
        if entry["first_id"] != expected_first:
            problems.append(f"{name}: first id {entry['first_id']} leaves a gap or overlap after id {expected_first - 1}")
        expected_first = entry["last_id"] + 1
        if name in broken:
            continue
        try:
            problems.extend(_check_shard(index_dir / name, entry, fingerprint, dim, keys, deleted, _regions_of(manifest, entry), sizes))
        except (OSError, KeyError) as exc:
            problems.append(f"{name}: unreadable shard ({exc})")
        if entry.get("faiss") and entry["faiss"]["file"] not in broken:
            try:
                import faiss

                fpath = index_dir / entry["faiss"]["file"]
                count = len(faiss_index.read_codes(fpath)) if fpath.name.endswith(".npy") else faiss.read_index(str(fpath)).ntotal
                if count != entry["items"]:
                    problems.append(f"{entry['faiss']['file']}: holds {count} vectors, shard has {entry['items']}")
            except (RuntimeError, ValueError) as exc:
                problems.append(f"{entry['faiss']['file']}: unreadable FAISS file ({str(exc).splitlines()[-1]})")
        elif manifest.get("trained") and not entry.get("faiss"):
            problems.append(f"{name}: no FAISS file although the index is trained ({manifest['index_spec']})")
    if expected_first != int(manifest["next_id"]):
        problems.append(f"manifest.json: next_id {manifest['next_id']} but the shards end at id {expected_first - 1}")
    try:
        deleted = deleted_ids(index_dir, manifest, verify=False)
        report.deleted = int(deleted.size)
        if deleted.size and (deleted[0] < 0 or deleted[-1] >= int(manifest["next_id"])):
            problems.append("manifest.json: a tombstoned id is outside the index")
    except MedcbirError as exc:
        problems.append(str(exc))
    problems.extend(region_index.check(index_dir, manifest, skip=broken))
    if manifest.get("regions"):
        items = max(1, int(manifest["next_id"]))
        record = manifest["regions"]
        report.regions = {"version": record.get("version"), "dim": int(record["dim"]), "regions": sizes["regions"],
                          "per_image": round(sizes["regions"] / items, 2), "bytes": sizes["region_bytes"],
                          "bytes_per_image": round(sizes["region_bytes"] / items, 1),
                          "slice_bytes_per_image": round(sizes["slice_bytes"] / items, 1)}
    report.ok = not problems
    return report


def _regions_of(manifest: dict, entry: dict) -> dict | None:
    """The regions record a shard's ``regions/`` group must match: the manifest's, or, for a shard
    a region refresh under way has done (:mod:`~medcbir.indexer.region_refresh`), the refresh's."""
    refresh = manifest.get("regions_refresh")
    if refresh and entry.get("regions_version") == refresh.get("version"):
        return refresh
    return manifest.get("regions")


def _dataset_bytes(node) -> int:
    """Bytes an HDF5 group (or dataset) holds on disk."""
    if isinstance(node, h5py.Dataset):
        return int(node.id.get_storage_size())
    return sum(_dataset_bytes(child) for child in node.values())


def _check_regions(f, name: str, items: int, record: dict | None, sizes: dict) -> list[str]:
    """The ``regions/`` group of a shard against the manifest's regions record (and its sizes counted)."""
    sizes["slice_bytes"] += _dataset_bytes(f["embeddings"]) + _dataset_bytes(f["ids"]) + _dataset_bytes(f["meta"])
    if not record:
        return [f"{name}: holds regions the manifest does not record"] if "regions" in f else []
    if "regions" not in f:
        return [f"{name}: the index stores regions but this shard has none"]
    group = f["regions"]
    out = []
    version = group.attrs.get("version")
    version = version.decode() if isinstance(version, bytes) else version
    if version != record.get("version"):
        out.append(f"{name}: regions of recipe {version!r}, the manifest's are {record.get('version')!r}")
    rows, boxes, descriptors = group["row"][...], group["boxes"], group["descriptors"]
    if boxes.shape != (len(rows), 4) or descriptors.shape != (len(rows), int(record["dim"])):
        out.append(f"{name}: regions {boxes.shape} boxes / {descriptors.shape} descriptors for {len(rows)} rows ({record['dim']}-d)")
    if len(rows) and (rows.min() < 0 or rows.max() >= items):
        out.append(f"{name}: a region belongs to row {int(rows.max())}, the shard has {items} items")
    if len(rows) and not np.isfinite(descriptors[...]).all():
        out.append(f"{name}: a region descriptor is not finite")
    sizes["regions"] += len(rows)
    sizes["region_bytes"] += _dataset_bytes(group)
    return out


def _check_shard(path: Path, entry: dict, fingerprint: str, dim: int, keys: set, deleted: np.ndarray, regions: dict | None = None,
                 sizes: dict | None = None) -> list[str]:

    name = path.name
    out = []
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("encoder_fingerprint") != fingerprint:
            out.append(f"{name}: encoder fingerprint {str(attrs.get('encoder_fingerprint'))[:12]} differs from the manifest's {fingerprint[:12]}")
        if int(attrs.get("dim", -1)) != dim or attrs.get("metric") != "ip":
            out.append(f"{name}: dim/metric {attrs.get('dim')}/{attrs.get('metric')} differ from the manifest's {dim}/ip")
        try:
            decoder = Decoder.of(f, dim)
        except IndexCorrupt as exc:  # a transform-coded shard whose codebook is missing or another
            return [*out, str(exc)]
        except (KeyError, ValueError) as exc:
            return [*out, f"{name}: embeddings stored {f.attrs.get('embeddings_codec')!r} cannot be decoded ({exc})"]
        stored = f["embeddings"]
        book = (entry.get("codebook") or {}).get("file")
        if book != (attrs.get("codebook") if decoder.transform is not None else None):
            out.append(f"{name}: coded with codebook {attrs.get('codebook')}, the manifest says {book}")
        if stored.shape != decoder.stored_shape(entry["items"]):
            out.append(f"{name}: embeddings {stored.shape} but the manifest says {entry['items']}×{dim}")
        elif decoder.checksum(stored[...]) != attrs.get("embeddings_sha256"):
            out.append(f"{name}: embeddings do not match their recorded sha256")
        ids = f["ids"][...]
        if not np.array_equal(ids, np.arange(entry["first_id"], entry["last_id"] + 1)):
            out.append(f"{name}: ids are not {entry['first_id']}..{entry['last_id']}")
        for column in f["meta"]:
            if f["meta"][column].shape[0] != len(ids):
                out.append(f"{name}: column {column} has {f['meta'][column].shape[0]} rows for {len(ids)} ids")
        # A tombstoned item's key may come back (its file replaced): only live keys are unique.
        out.extend(_check_regions(f, name, len(ids), regions, sizes if sizes is not None else {"regions": 0, "region_bytes": 0, "slice_bytes": 0}))
        live = ~np.isin(ids, deleted)
        sops = f["meta"]["sop_instance_uid"][...][live]
        frames = f["meta"]["frame"][...][live]
    dupes = 0
    for sop, frame in zip(sops, frames):
        h = key_hash(sop.decode("utf-8"), int(frame))
        if h in keys:
            dupes += 1
        keys.add(h)
    if dupes:
        out.append(f"{name}: {dupes} item key(s) (sop_instance_uid, frame) already in an earlier shard")
    return out
