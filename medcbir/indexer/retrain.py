"""Retraining the trained parts of an approximate index (IVF centroids, PQ codebooks) as it grows.

The writer trains once, on the items it has when the spec first needs training (the first
~65k items in arrival order). An archive that grows 10× past that is searched through a
quantiser that never saw most of it: new kinds of images pile into a few inverted lists. So
when the live item count reaches :data:`RETRAIN_FACTOR` × the training sample, or the lists'
imbalance passes :data:`IMBALANCE_MAX`, the spec is trained again (``faiss_index.train``, the
writer's own training code) on a fresh uniform sample of all live items, every shard is
re-encoded, and the new trained file and codes are swapped in by one manifest commit. The
shards (embeddings, ids, metadata) are not touched. The work is done on a snapshot without
the writer lock (:mod:`.staging`); readers keep the generation they opened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from medcbir.errors import ConfigError
from medcbir.fsutil import fsync_dir
from medcbir.indexer import faiss_index
from medcbir.indexer.checksum import fast_checksum, stamp
from medcbir.indexer.lock import WriterLock
from medcbir.indexer.manifest import commit_manifest, deleted_ids, read_manifest
from medcbir.indexer.shard import read_embeddings
from medcbir.indexer.staging import Overtaken, new_staging, same_prefix

# Retrain when the live items reach this multiple of the training sample.
RETRAIN_FACTOR = 8
# ... or when the inverted lists' imbalance factor (FAISS's: 1.0 = perfectly even) passes this.
IMBALANCE_MAX = 4.0


def list_imbalance(index_dir: Path, manifest: dict) -> float | None:
    """FAISS's imbalance factor of the IVF lists, read from the shards' standalone codes
    (their leading bytes are the list number), or None for a non-IVF / non-codes index."""
    import faiss

    trained = manifest.get("trained")
    files = [s["faiss"]["file"] for s in manifest["shards"] if s.get("faiss")]
    if not trained or not files or not all(f.endswith(".codes.npy") for f in files):
        return None
    base, _ = faiss_index.parts(faiss.read_index(str(Path(index_dir) / trained["file"])))
    ivf = faiss.extract_index_ivf(base)
    width = int(ivf.coarse_code_size())
    sizes = np.zeros(int(ivf.nlist), dtype=np.int64)
    for name in files:
        codes = faiss_index.read_codes(Path(index_dir) / name)
        lists = np.zeros(len(codes), dtype=np.int64)
        for b in range(width):  # little-endian list number
            lists |= codes[:, b].astype(np.int64) << (8 * b)
        sizes += np.bincount(lists, minlength=len(sizes))[: len(sizes)]
    total = sizes.sum()
    return float(len(sizes) * (sizes.astype(np.float64) ** 2).sum() / total**2) if total else None


def retrain_due(index_dir: Path, manifest: dict, factor: float = RETRAIN_FACTOR, imbalance_max: float = IMBALANCE_MAX) -> str | None:
    """Why the index should be retrained now (``"growth"`` / ``"imbalance"``), or None."""
    trained = manifest.get("trained")
    if not trained or faiss_index.is_flat(manifest["index_spec"]) or not trained.get("items"):
        return None
    deleted = manifest.get("deleted") or []
    live = int(manifest["next_id"]) - (deleted["count"] if isinstance(deleted, dict) else len(deleted))
    if live >= factor * int(trained["items"]):
        return "growth"
    imbalance = list_imbalance(index_dir, manifest)
    if imbalance is not None and imbalance > imbalance_max:
        return "imbalance"
    return None


def _sample(index_dir: Path, manifest: dict, size: int, seed: int) -> np.ndarray:
    """A uniform sample of the live items' embeddings (sorted ids, read shard by shard)."""
    live = np.setdiff1d(np.arange(int(manifest["next_id"]), dtype=np.int64), deleted_ids(index_dir, manifest))
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(live, size=min(size, len(live)), replace=False))
    parts = []
    for entry in manifest["shards"]:
        rows = ids[(ids >= entry["first_id"]) & (ids <= entry["last_id"])] - entry["first_id"]
        if len(rows):
            parts.append(read_embeddings(index_dir / entry["file"], rows))
    return np.concatenate(parts)


def retrain(index_dir: str | Path, sample_size: int | None = None, seed: int | None = None, reason: str = "on demand") -> dict:
    """Train the index's spec again on a fresh uniform sample and swap it in (a new generation).

    Args:
        index_dir: the index folder.
        sample_size: training items (default :data:`~medcbir.indexer.faiss_index.TRAIN_SAMPLE`).
        seed: sample seed (default: the generation, so each retraining draws a new sample).
        reason: recorded in the manifest's ``trained`` entry.

    Returns:
        ``{"generation", "items", "sample", "seconds", "reason"}``, or with ``"skipped"``.

    Raises:
        ConfigError: the index is exact (nothing trained).
    """
    import time

    from medcbir.indexer.writer import remove_orphans

    start = time.perf_counter()
    index_dir = Path(index_dir)
    snapshot = read_manifest(index_dir)
    if not snapshot.get("trained") or faiss_index.is_flat(snapshot["index_spec"]):
        raise ConfigError(f"index {index_dir} is exact ({snapshot['index_spec']}): nothing to retrain")
    spec, dim = snapshot["index_spec"], int(snapshot["encoder"]["dim"])
    sample = _sample(index_dir, snapshot, int(sample_size or faiss_index.TRAIN_SAMPLE),
                     int(snapshot["generation"]) if seed is None else int(seed))
    trained = faiss_index.train(spec, dim, sample)
    base, _ = faiss_index.parts(trained)
    staging = new_staging(index_dir)
    try:
        def encode(entry: dict) -> dict:
            ids = np.arange(entry["first_id"], entry["last_id"] + 1, dtype=np.int64)
            emb = read_embeddings(index_dir / entry["file"])
            return stamp(faiss_index.write_shard_part(base, ids, emb, staging / entry["file"].split(".")[0]), staging)

        parts = [encode(e) for e in snapshot["shards"]]
        staged_trained = staging / "trained.faiss"
        size, digest = faiss_index.write_index(trained, staged_trained, hook=None)
        with WriterLock(index_dir, wait=True):
            current = read_manifest(index_dir)
            if not same_prefix(snapshot, current):
                raise Overtaken
            parts += [encode(e) for e in current["shards"][len(snapshot["shards"]):]]  # committed meanwhile
            generation = int(current["generation"]) + 1
            new = dict(current)
            trained_entry = {"file": f"trained-{generation:06d}.faiss", "bytes": size, "sha256": digest,
                             "items": int(len(sample)), "at_items": int(current["next_id"]), "reason": reason,
                             "xxh3": fast_checksum(staged_trained)}
            shards = []
            renames = [(staged_trained, index_dir / trained_entry["file"])]
            for entry, part in zip(current["shards"], parts):
                stem, suffix = entry["file"].split(".")[0], part["file"].split(".", 1)[1]
                final = f"{stem}.r{generation:06d}.{suffix}"
                renames.append((staging / part["file"], index_dir / final))
                shards.append({**entry, "faiss": {**part, "file": final}})
            for src, dst in renames:
                src.replace(dst)
            fsync_dir(index_dir)
            new["trained"], new["shards"] = trained_entry, shards
            new = commit_manifest(index_dir, new)
            remove_orphans(index_dir, new)
        return {"generation": int(new["generation"]), "items": int(new["next_id"]), "sample": int(len(sample)),
                "seconds": time.perf_counter() - start, "reason": reason}
    except Overtaken:
        return {"generation": int(snapshot["generation"]), "items": int(snapshot["next_id"]), "sample": int(len(sample)),
                "seconds": time.perf_counter() - start, "reason": reason, "skipped": "another maintenance job committed first"}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
