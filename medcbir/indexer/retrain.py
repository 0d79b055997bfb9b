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

Retraining is also due when the recall@10 last measured on the whole index
(:mod:`.remeasure`, at the writer's close once the index has grown) is below the target and
newer than the trained parts (reason ``"recall"``). A retraining runs the spec choice again
(:func:`medcbir.indexer.recall.choose`, for ``auto`` over all its candidates: a finer code is
chosen when the old one caps recall at this size), commits it, and measures the new generation
on all its items; when that falls short of the target, ``auto`` tries the next finer candidate
in a further generation.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np

from medcbir.errors import ConfigError
from medcbir.fsutil import fsync_dir
from medcbir.indexer import faiss_index, recall, rerank
from medcbir.indexer.compression import describe, parse_budget
from medcbir.indexer.checksum import fast_checksum, stamp
from medcbir.indexer.lock import WriterLock
from medcbir.indexer.manifest import commit_manifest, deleted_ids, read_manifest
from medcbir.indexer.shard import read_embeddings
from medcbir.indexer.staging import Overtaken, new_staging, same_prefix
from medcbir.indexer.remeasure import measured_at
from medcbir.indexer.remeasure import measure_index, newest_from, streamed_exact
from medcbir.indexer.store import IndexStore
from medcbir.indexer.writer import remove_orphans

log = logging.getLogger(__name__)

#: Retraining reads every vector into RAM at once up to this many bytes of float32, shard by
#: shard above (encoding and the measurement's exact neighbours streamed).
IN_RAM_BYTES = 1 << 30
#: After a retraining kept the index (nothing measured better), the next waits for this much growth.
KEPT_GROWTH = 2.0
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
    """Why the index should be retrained now (``"recall"`` / ``"growth"`` / ``"lists"`` /
    ``"imbalance"``), or None; ``"lists"``: an ``auto`` index grew to twice the inverted lists it
    was trained with (:func:`~medcbir.indexer.faiss_index.auto_nlist`)."""

    trained = manifest.get("trained")
    if not trained or faiss_index.is_flat(manifest["index_spec"]) or not trained.get("items"):
        return None
    live = _live(manifest)
    kept = int(trained.get("kept_at") or 0)
    if kept and live < KEPT_GROWTH * kept:
        return None  # a retraining at `kept` items found nothing better than this index: wait for growth
    if live >= factor * int(trained["items"]):
        return "growth"
    lists = _ivf_lists(manifest["index_spec"])
    if (manifest.get("index_spec_requested", "auto") == "auto" and lists
            and faiss_index.auto_nlist(live, faiss_index.train_sample(live)) >= 2 * lists):
        return "lists"  # auto's inverted lists grow with the archive (faiss_index.auto_nlist)
    measured = manifest.get("recall") or {}
    reached = recall.reached(measured)
    if (reached is not None and measured.get("target") is not None
            and reached < float(measured["target"])
            and measured_at(measured) > int(trained.get("at_items") or trained["items"])):
        return "recall"
    imbalance = list_imbalance(index_dir, manifest)
    if imbalance is not None and imbalance > imbalance_max:
        return "imbalance"
    return None


def _live(manifest: dict) -> int:
    deleted = manifest.get("deleted") or []
    return int(manifest["next_id"]) - (deleted["count"] if isinstance(deleted, dict) else len(deleted))


def _ivf_lists(spec: str) -> int | None:
    """Inverted lists named by a factory string (``…IVF4096,…``), None without an IVF level."""
    match = re.search(r"(?:^|,)\s*IVF(\d+)", spec)
    return int(match[1]) if match else None


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


def retrain(index_dir: str | Path, sample_size: int | None = None, seed: int | None = None, reason: str = "on demand",
            specs: list[str] | None = None, memory_budget: float | str | None = None) -> dict:
    """Choose and train the index's spec again on a fresh uniform sample, measure it on all the
    items, and swap it in by one manifest commit (a new generation).

    Args:
        index_dir: the index folder.
        sample_size: training items (default :func:`~medcbir.indexer.faiss_index.train_sample` of
            the live items).
        seed: sample seed (default: the generation, so each retraining draws a new sample).
        reason: recorded in the manifest's ``trained`` entry.
        specs: candidate specs in order (default: ``auto``'s candidates for an ``auto`` index,
            else the index's own spec).
        memory_budget: bytes of RAM per item for search (``--memory-budget``; default the
            index's recorded one): ``auto`` tries only the chains that fit; recorded.

    Returns:
        ``{"generation", "items", "sample", "seconds", "reason", "spec", "recall_at_10",
        "tried"}`` (``tried``: the specs measured on all items and their recall@10), or with
        ``"skipped"``.

    Raises:
        ConfigError: the index is exact (nothing trained).
    """
    import time

    start = time.perf_counter()
    index_dir = Path(index_dir)
    snapshot = read_manifest(index_dir)
    if not snapshot.get("trained") or faiss_index.is_flat(snapshot["index_spec"]):
        raise ConfigError(f"index {index_dir} is exact ({snapshot['index_spec']}): nothing to retrain")
    dim = int(snapshot["encoder"]["dim"])
    auto = snapshot.get("index_spec_requested", "auto") == "auto"
    target = float((snapshot.get("recall") or {}).get("target") or snapshot.get("target_recall") or recall.TARGET_RECALL)
    live = _live(snapshot)
    sample = _sample(index_dir, snapshot, int(sample_size or faiss_index.train_sample(live)),
                     int(snapshot["generation"]) if seed is None else int(seed))
    budget = snapshot.get("memory_budget") if memory_budget is None else parse_budget(memory_budget)
    order = list(specs or (recall.candidates(dim, len(sample), budget, items=live) if auto else [snapshot["index_spec"]]))
    n_items, in_ram = int(snapshot["next_id"]), int(snapshot["next_id"]) * dim * 4 <= IN_RAM_BYTES
    # small indexes: every vector read once; large ones: read shard by shard (encoding, and the
    # exact neighbours of the measurement block by block) so that RAM does not grow with the index
    vectors = np.concatenate([read_embeddings(index_dir / e["file"]) for e in snapshot["shards"]]) if in_ram else None
    reader = None if in_ram else IndexStore.open(index_dir, verify="none", manifest=snapshot, build_index=False)
    tried: list[dict] = []
    best = None  # the best candidate measured below the target: (its staging, choice, trained, parts, measured)
    try:
        while True:
            choice, trained = recall.choose(sample, target, specs=order, budget=budget)
            this = new_staging(index_dir)
            try:
                parts = _encode(index_dir, snapshot["shards"], trained, this, vectors)
                measured = _measure(trained, this, parts, vectors, choice, target, reader) if trained is not None else None
                if measured is not None:
                    tried.append({"spec": choice.spec, "recall_at_10": round(measured["recall_at_10"], 4)})
                rest = order[order.index(choice.spec) + 1:] if choice.spec in order else []
                if not (auto and measured is not None and recall.reached(measured) < target):
                    out = _commit(index_dir, snapshot, choice, trained, this, parts, measured, len(sample), reason, budget)
                else:
                    if best is None or _better(measured, best[4]):
                        if best is not None:
                            shutil.rmtree(best[0], ignore_errors=True)
                        best = (this, choice, trained, parts, measured)
                    if rest:
                        log.info("retrain %s: %s reaches recall@10 %.3f < %.2f on all %d items; trying %s", index_dir, choice.spec,
                                 measured["recall_at_10"], target, n_items, rest[0])
                        order = rest
                        continue
                    # no candidate reached the target: the best of them, and only if it measures
                    # better than the index it would replace
                    staged, choice, trained, parts, measured = best
                    current = snapshot.get("recall") or {}
                    if recall.reached(current) is not None and current.get("spec") == snapshot["index_spec"] and not _better(measured, current):
                        log.warning("retrain %s: no candidate reaches recall@10 %.2f on all %d items and none measures better "
                                    "than the current %s (%.3f): kept", index_dir, target, n_items, snapshot["index_spec"],
                                    float(current.get("recall_at_10") or 0.0))
                        _record_kept(index_dir, n_items)
                        return {"generation": int(snapshot["generation"]), "items": n_items, "sample": len(sample), "reason": reason,
                                "spec": snapshot["index_spec"], "skipped": "no candidate measured better than the current index",
                                "seconds": time.perf_counter() - start, "tried": tried, "recall_at_10": current.get("recall_at_10")}
                    out = _commit(index_dir, snapshot, choice, trained, staged, parts, measured, len(sample), reason, budget)
            finally:
                if best is None or best[0] != this:
                    shutil.rmtree(this, ignore_errors=True)
            out.update(seconds=time.perf_counter() - start, tried=tried,
                       recall_at_10=None if measured is None else measured["recall_at_10"])
            return out
    finally:
        if best is not None:
            shutil.rmtree(best[0], ignore_errors=True)
        if reader is not None:
            reader.close()


def _better(a: dict, b: dict) -> bool:
    """True when recall record ``a`` measured better than ``b`` (lower bound, then mean)."""
    return (recall.reached(a) or 0.0, float(a.get("recall_at_10") or 0.0)) > (recall.reached(b) or 0.0, float(b.get("recall_at_10") or 0.0))


def _encode(index_dir: Path, shards: list[dict], trained, staging: Path, vectors: np.ndarray | None = None) -> list:
    """Each shard's FAISS part for ``trained`` written into ``staging`` (None each for exact
    ``Flat``); ``vectors``: the shards' embeddings concatenated, if already read."""
    if trained is None:
        return [None] * len(shards)
    base = faiss_index.parts(trained)[0]
    out, lo = [], 0
    for entry in shards:
        ids = np.arange(entry["first_id"], entry["last_id"] + 1, dtype=np.int64)
        emb = vectors[lo:lo + len(ids)] if vectors is not None else read_embeddings(index_dir / entry["file"])
        lo += len(ids)
        out.append(stamp(faiss_index.write_shard_part(base, ids, emb, staging / entry["file"].split(".")[0]), staging))
    return out


def _measure(trained, staging: Path, parts: list, vectors: np.ndarray | None, choice, target: float, reader: IndexStore | None = None) -> dict:
    """Recall@10 of the staged index on all its items (:mod:`.remeasure`'s measurement): the
    ``recall`` record the commit writes, with the grid point chosen on all items. Without
    ``vectors``, ``reader`` (the snapshot's store, no FAISS index) streams them."""

    if vectors is not None:
        n, dim = vectors.shape
        fill = lambda out: out.__setitem__(slice(None), vectors)  # noqa: E731 - one-line fill
    else:
        n, dim = len(reader.ids), reader.dim
        fill = reader._fill
    index, _ = faiss_index.combine(trained, [staging / p["file"] for p in parts], fill, n, dim)
    if faiss_index.reranks_from_shards(choice.spec):  # the re-rank reads the (unchanged) shards
        index = rerank.from_array(index, vectors) if vectors is not None else rerank.RerankFromRows(index, reader.stored_rows)
    if vectors is not None:
        best, tried, queries = measure_index(index, choice.spec, vectors, target, recent_from=newest_from(n))
    else:
        best, tried, queries = measure_index(index, choice.spec, None, target, recent_from=newest_from(n), n=n,
                                             exact_of=lambda rows: streamed_exact(reader, rows))
    del index
    chosen = choice.record()
    return {**chosen, "recall_at_10": round(best.recall_at_10, 4), "recall_at_10_low": round(best.low, 4), "held_out": False,
            "qps": round(best.qps, 1), "params": dict(best.params),
            "items": int(n), "at_items": int(n), "queries": queries, "tried": chosen["tried"] + [t.to_dict() for t in tried]}


def _record_kept(index_dir: Path, items: int) -> None:
    """Note in the manifest that a retraining at ``items`` live items found nothing better, so
    :func:`retrain_due` waits for the archive to double before trying again (a maintenance loop
    would otherwise retrain, keep the index and retrain again on every check)."""
    with WriterLock(index_dir, wait=True):
        current = read_manifest(index_dir)
        if current.get("trained"):
            commit_manifest(index_dir, {**current, "trained": {**current["trained"], "kept_at": int(items)}})


def _commit(index_dir: Path, snapshot: dict, choice, trained, staging: Path, parts: list, measured: dict | None, sample: int,
            reason: str, budget: float | None = None) -> dict:
    """Commit the staged parts and the choice as a new generation (under the writer lock)."""

    staged_trained = staging / "trained.faiss"
    if trained is not None:
        size, digest = faiss_index.write_index(trained, staged_trained, hook=None)
    try:
        with WriterLock(index_dir, wait=True):
            current = read_manifest(index_dir)
            if not same_prefix(snapshot, current):
                raise Overtaken
            parts = parts + _encode(index_dir, current["shards"][len(snapshot["shards"]):], trained, staging)  # committed meanwhile
            generation = int(current["generation"]) + 1
            new = dict(current)
            trained_entry = None
            renames = []
            if trained is not None:
                trained_entry = {"file": f"trained-{generation:06d}.faiss", "bytes": size, "sha256": digest,
                                 "items": int(sample), "at_items": int(current["next_id"]), "reason": reason,
                                 "xxh3": fast_checksum(staged_trained)}
                renames.append((staged_trained, index_dir / trained_entry["file"]))
            shards = []
            for entry, part in zip(current["shards"], parts):
                if part is None:
                    shards.append({**entry, "faiss": None})
                    continue
                stem, suffix = entry["file"].split(".")[0], part["file"].split(".", 1)[1]
                final = f"{stem}.r{generation:06d}.{suffix}"
                renames.append((staging / part["file"], index_dir / final))
                shards.append({**entry, "faiss": {**part, "file": final}})
            for src, dst in renames:
                src.replace(dst)
            fsync_dir(index_dir)
            record = measured or {**choice.record(), "at_items": int(current["next_id"])}
            record = {**record, "chain": describe(choice.spec, int(current["encoder"]["dim"])),
                      **({"memory_budget": budget} if budget is not None else {})}
            if budget is not None:
                new["memory_budget"] = budget
            new["trained"], new["shards"] = trained_entry, shards
            new.pop("lists", None)  # persisted lists of the codes just replaced
            new["index_spec"], new["search_params"], new["recall"] = choice.spec, dict(record["params"]), record
            new = commit_manifest(index_dir, new)
            remove_orphans(index_dir, new)
        return {"generation": int(new["generation"]), "items": int(new["next_id"]), "sample": int(sample), "reason": reason,
                "spec": choice.spec}
    except Overtaken:
        return {"generation": int(snapshot["generation"]), "items": int(snapshot["next_id"]), "sample": int(sample),
                "reason": reason, "spec": choice.spec, "skipped": "another maintenance job committed first"}
