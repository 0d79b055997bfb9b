"""Writing an index: :class:`IndexWriter` buffers embedded items and commits them as shards.

Commit protocol (docs/design.md, "Rules every stage keeps"): every shard (and its FAISS file) is
written under a temporary name, fsynced and renamed; then ``manifest.json`` — the single
commit point — is replaced atomically with the shard added. A crash anywhere leaves the
previous generation intact; orphans (temporary files, a renamed shard whose manifest never
landed) are removed by the next writer, and the re-run skips every committed item by key.

A source (file or URI) is never split across a commit boundary, so "this source is
committed" (:meth:`IndexWriter.has_source`, used to skip already-indexed files without
decoding them) always means "all of its frames are".
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from medcbir.errors import ConfigError, EncoderMismatch, IndexCorrupt, IndexNotFound
from medcbir.imaging.source_seal import SourceSeal, is_sealed
from medcbir.indexer import faiss_index
from medcbir.indexer.checksum import stamp
from medcbir.indexer.generations import fallback_manifest
from medcbir.indexer.keys import HashSet, key_hash, key_hashes, source_hash, source_hashes  # noqa: F401 - part of this module's API
from medcbir.indexer.lock import WriterLock
from medcbir.indexer.manifest import (commit_manifest, dropped_keys, history, manifest_path, new_manifest, read_manifest,
                                      retained_files)
from medcbir.indexer.compression import choose_storage, describe, fit_codebook, parse_budget
from medcbir.indexer.shard import (SHARD_DTYPES, STORAGE_BYTES, STORAGE_ORDER, ShardRegions, codebook_entry, index_codec, meta_columns, shard_dtype,
                                   shard_name, write_shard)
from medcbir.indexer.transform_codec import is_transform, min_fit_items
from medcbir.indexer.integrity import finish_checks, start_checks
from medcbir.indexer.staging import remove_stale_staging
from medcbir.encoders.compat import check_compatible
from medcbir.imaging import load_or_create_key
from medcbir.encoders.regions import DIM, PER_IMAGE, REGIONS_VERSION
from medcbir.encoders.regions import WithRegions
from medcbir.indexer.shard import read_embeddings
from medcbir.indexer.manifest import deleted_ids, store_deleted
from medcbir.indexer import similarity
from medcbir.indexer import remeasure
from medcbir.indexer import recall

log = logging.getLogger(__name__)

_ORPHAN = re.compile(r"^(shard-\d+(\.r\d+)?\.(h5|faiss|codes\.npy|regions-\d+\.npz)|(trained|lists)-\d+\.faiss|region-ivf-\d+\.npz|(tombstones|dropped)-\d+\.npy|codec-[0-9a-f]+\.npz|\..*\.tmp-\d+)$")


#: committed items not in the persisted inverted lists from which the writer's close writes them
#: again (:meth:`IndexWriter._persist_lists`): opening fills at most about this many items' codes
LISTS_TAIL = 65_536

def encoder_record(encoder: Any) -> dict:
    prep = encoder.preprocessing
    return {
        "fingerprint": encoder.fingerprint,
        "preprocessing": prep.to_dict() if hasattr(prep, "to_dict") else dict(prep),
        "dim": int(encoder.dim),
        "source": str(getattr(encoder, "source", "") or ""),
        **({"spec": encoder.spec} if getattr(encoder, "spec", None) else {}),  # a user encoder's spec
    }


def remove_orphans(index_dir: Path, manifest: dict | None) -> list[str]:
    """Delete files a crash left behind, or that no kept generation references any more.

    Call it holding the writer lock: every index file is written under that lock, so nothing
    here belongs to a live writer.
    """

    keep = retained_files(index_dir, manifest)
    removed = remove_stale_staging(index_dir)
    for path in index_dir.iterdir():
        if path.name not in keep and _ORPHAN.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def coded_storage(dtype: str, codec, embeddings: np.ndarray, shard: str) -> tuple[str, Any, tuple | None]:
    """(storage, codebook, (row codes, range)) a shard's embeddings are written with: as asked
    for a storage that is not transform-coded; for a ``tc*`` one, coded under the index's
    codebook — or float16 (no codebook, no codes) when there is no codebook yet, or when it codes
    them with more than :data:`~medcbir.indexer.transform_codec.DRIFT_RATIO` times the relative
    error it had on its own sample (embeddings unlike those it was fitted on; with a warning)."""
    if not is_transform(dtype):
        return dtype, None, None
    if codec is None:
        return "float16", None, None
    stored, value_range, error = codec.encode_measured(embeddings)
    if codec.drifted(error):
        log.warning("%s: the %s codebook %s codes these embeddings with relative error %.4f, %.1f× its own %.4f: stored as float16 "
                    "(the archive has drifted from the items the codebook was fitted on)", shard, codec.dtype, codec.file, error,
                    error / codec.error, codec.error)
        return "float16", None, None
    return dtype, codec, (stored, value_range)


def shard_regions(region_sets: list, dim: int) -> ShardRegions:
    """One RegionSet per item (None: no regions) → a shard's ``regions/`` block, rows = item rows."""
    sets = [(row, r) for row, r in enumerate(region_sets) if r is not None and len(r)]
    if not sets:
        return ShardRegions.empty(dim)
    rows = np.concatenate([np.full(len(r), row, dtype=np.int64) for row, r in sets])
    boxes = np.concatenate([np.asarray(r.boxes, dtype=np.int32).reshape(-1, 4) for _, r in sets])
    descriptors = np.concatenate([np.asarray(r.descriptors, dtype=np.float32).reshape(-1, dim) for _, r in sets])
    return ShardRegions(rows, boxes, descriptors)


class IndexWriter:
    """Creates or resumes an index and commits embedded items to it, shard by shard.

    Use :meth:`open`; ``close()`` (or the ``with`` block) commits what is buffered. Several
    writers (processes) may be open on one index: each commit takes the writer lock, reads
    the newest manifest, drops buffered items another writer committed meanwhile (by key),
    numbers its shards and ids after the newest ones and commits atomically.

    Attributes:
        index_dir: the index folder.
        encoder: the :class:`~medcbir.encoders.runtime.Encoder` embedding images.
        key: the archive's pseudonym key.
        manifest: the last committed manifest.
        shards_written: shards committed by this writer.
    """

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        encoder: Any,
        *,
        index_spec: str = "auto",
        shard_size: int = 4096,
        key_file: str | Path | None = None,
        device=None,
        lock_timeout: float = 600.0,
        target_recall: float | None = None,
        regions: bool | None = None,
        regions_per_image: int | None = None,
        memory_budget: float | str | None = None,
        shard_dtype: str | None = None,
    ) -> "IndexWriter":
        """Create ``index_dir`` or resume it.

        Args:
            index_dir: the index folder.
            encoder: an Encoder, a checkpoint/ONNX path, or ``"default"``.
            index_spec: ``"auto"`` or a FAISS factory string (fixed when the index is created).
            shard_size: items per shard.
            key_file: pseudonym key file (default ``INDEX/pseudonym.key``, created 0600).
            device: the :class:`~medcbir.device.Device` for the encoder and FAISS training.
            lock_timeout: seconds to queue for the writer lock (at open and at each commit).
            target_recall: recall@10 the index must reach on its own embeddings (default
                0.95; ``auto`` picks the cheapest spec reaching it; kept in the manifest).
            regions: store each item's regions for region search (:mod:`medcbir.encoders.regions`);
                None = the index's own choice (off for a new index: items added as bare embeddings
                have no image to find regions in; :func:`~medcbir.indexer.pipeline.index_archive`
                turns them on for a new index). Fixed when the index is created.
            regions_per_image: regions kept per item (a new index; default
                :data:`medcbir.encoders.regions.PER_IMAGE`).
            memory_budget: bytes of RAM per item for search (``--memory-budget``; e.g. ``"1KB"``):
                ``auto`` then tries only the chains that fit, projected ones first
                (:mod:`medcbir.indexer.compression`); kept in the manifest for retraining.
            shard_dtype: how shards store embeddings: ``"float32"`` (default), ``"float16"``,
                ``"sq8"``/``"sq6"`` (8/6-bit per-dimension codes, decoded on read), ``"tc4"``/
                ``"tc6"``/``"tc8"`` (transform codes under a codebook fitted on the first shard
                of at least :func:`~medcbir.indexer.transform_codec.min_fit_items` items; shards
                written before one is fitted are float16), or ``"auto"`` (the smallest of tc4,
                tc6, tc8, sq8, float16 whose exact recall@10 on the first shard's stored and
                decoded vectors shows it costs nothing,
                :func:`~medcbir.indexer.compression.choose_storage`; else float32; once an
                approximate chain is trained, the chain rule may choose a smaller one).
                Fixed when the index's first shard is written.

        Raises:
            EncoderMismatch: the index was built with another encoder.
            ConfigError: bad spec or shard size, or a spec (or a region choice) different from the index's.
            IndexBusy: another process held the writer lock for longer than ``lock_timeout``.
        """
        if int(shard_size) < 1:
            raise ConfigError(f"--shard-size must be at least 1, not {shard_size}")
        self = cls()
        self.index_dir = Path(index_dir)
        if self.index_dir.exists() and not self.index_dir.is_dir():
            raise ConfigError(f"{index_dir} exists and is not a folder")
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._open = True
        # The lock is held only while the index is read and tidied here and around each commit:
        # several writers (the Orthanc plugin, CLI runs) add to one index, queuing for commits.
        with WriterLock(self.index_dir, wait=True, timeout=lock_timeout):
            self._setup(encoder, index_spec, int(shard_size), key_file, device)
            self._setup_regions(regions, regions_per_image)
            if target_recall is not None:
                if not 0.0 < float(target_recall) <= 1.0:
                    raise ConfigError(f"--target-recall must be in (0, 1], not {target_recall}")
                self.manifest = dict(self.manifest, target_recall=float(target_recall))
            self._budget = parse_budget(memory_budget)
            self._dtype_request = shard_dtype
            self._apply_requests()
        self._lock_timeout = lock_timeout
        return self

    def _setup(self, encoder, index_spec, shard_size, key_file, device) -> None:
        from medcbir.encoders.runtime import open_encoder

        self.encoder = open_encoder(encoder, device)
        self.device = device
        self.shard_size = shard_size
        info = encoder_record(self.encoder)
        index_spec = faiss_index.validate_spec(index_spec or "auto", info["dim"])
        self.recovery = None
        if manifest_path(self.index_dir).is_file() or history(self.index_dir):
            try:
                manifest = read_manifest(self.index_dir)
            except IndexCorrupt as exc:

                manifest, self.recovery = fallback_manifest(self.index_dir, exc)

            check_compatible(self.encoder, manifest["encoder"]["fingerprint"], manifest["encoder"]["preprocessing"])
            if int(manifest["encoder"]["dim"]) != info["dim"]:
                raise EncoderMismatch(f"index has {manifest['encoder']['dim']}-d embeddings; this encoder gives {info['dim']}-d")
            requested = manifest.get("index_spec_requested", manifest["index_spec"])
            if index_spec != "auto" and index_spec != requested:
                raise ConfigError(f"index {self.index_dir} was created with --index-spec {requested!r}, not {index_spec!r}")
        else:
            manifest = new_manifest(info, index_spec, str(Path(key_file).absolute()) if key_file else None)
            if index_spec != "auto":
                manifest["index_spec"] = index_spec
        self.manifest = manifest
        self._refuse_damaged(manifest)
        remove_orphans(self.index_dir, manifest if manifest.get("shards") or manifest_path(self.index_dir).is_file() else None)

        key_path = Path(key_file) if key_file else (Path(manifest["key_file"]) if manifest.get("key_file") else self.index_dir / "pseudonym.key")
        self.key: bytes = load_or_create_key(key_path)
        self._trained = None
        if manifest.get("trained"):
            import faiss

            self._trained = faiss.read_index(str(self.index_dir / manifest["trained"]["file"]))
        # Keys and sources of every committed item, tombstoned ones too (a deleted series is not
        # indexed again from its files), except sources released because their file changed.
        self._keys = HashSet()
        self._sources = HashSet()
        self._known_shards: set[str] = set()
        self._load_committed_keys()
        self._source_stats: dict[str, tuple[int, int]] = {}
        self._dropped_keys = set(int(k) for k in dropped_keys(self.index_dir, manifest))
        self.reembedded = 0  # committed items that a repair had dropped (their keys)
        self._buffer_metas: list = []
        self._buffer_embeddings: list[np.ndarray] = []
        self._buffer_regions: list = []  # one RegionSet (or None) per buffered item
        self._buffer_keys: set[int] = set()
        self._buffer_sources: set[int] = set()
        self.shards_written = 0
        self.items_committed = 0
        self.deleted_sources = 0  # sources tombstoned by the last delete_sources
        self.batch_size: int | None = None  # encoder forward batch (None: the encoder's default)

    def _apply_requests(self) -> None:
        """Put this writer's ``memory_budget`` and ``shard_dtype`` into its (next) manifest; again
        after adopting a newer committed one."""
        if getattr(self, "_budget", None) is not None and self.manifest.get("memory_budget") != self._budget:
            self.manifest = dict(self.manifest, memory_budget=self._budget)
        if getattr(self, "_dtype_request", None) is not None:
            self._request_shard_dtype(self._dtype_request)

    def _request_shard_dtype(self, wanted: str) -> None:
        if wanted not in (*SHARD_DTYPES, "auto"):
            raise ConfigError(f"--shard-dtype must be {', '.join(SHARD_DTYPES)} or auto, not {wanted!r}")
        record = self.manifest.get("storage") or {}
        decided = record.get("dtype") if self.manifest.get("shards") or record.get("dtype") else None
        if decided is None and self.manifest.get("shards"):
            decided = "float32"  # an index from before float16 storage
        if decided is not None:
            if wanted not in ("auto", decided) and record.get("requested", decided) != wanted:
                raise ConfigError(f"index {self.index_dir} stores {decided} embeddings, not {wanted} (fixed at its first shard, or by `--shard-dtype auto` once trained)")
            return
        # an explicit dtype is decided now (Ray actors write shards with it); auto at the first shard
        self.manifest = dict(self.manifest, storage={"requested": wanted, **({} if wanted == "auto" else {"dtype": wanted})})

    @property
    def shard_dtype(self) -> str:
        """How the next shard stores its embeddings (float32 while an ``auto`` choice is undecided)."""
        return shard_dtype(self.manifest)

    def _decide_shard_dtype(self, manifest: dict, embeddings: np.ndarray) -> None:
        """Settle ``storage`` at the first shard: a requested dtype as it is, ``auto`` measured."""
        record = manifest.get("storage") or {}
        if record.get("dtype") or not record.get("requested"):
            return
        if record["requested"] == "auto":
            chosen = {"requested": "auto", **choose_storage(embeddings)}
            if is_transform(chosen["dtype"]):  # its codebook: fitted on all the rows it was measured on
                chosen["codebook"] = fit_codebook(self.index_dir, chosen["dtype"], embeddings)[1]
            manifest["storage"] = chosen
        else:
            manifest["storage"] = {"requested": record["requested"], "dtype": record["requested"]}

    def _shard_codec(self, manifest: dict, embeddings: np.ndarray):
        """The codebook a ``tc*`` shard is coded with: the index's, or, when it has none yet (an
        explicit ``--shard-dtype tc*``, or its codebook lost to a repair), one fitted on this
        shard's embeddings and recorded in ``manifest``; None when they are too few to fit one
        (the shard is then stored in float16)."""
        codec = index_codec(self.index_dir, manifest)
        if codec is not None:
            return codec
        if len(embeddings) < min_fit_items(embeddings.shape[1]):
            log.info("index %s: %d items are too few to fit a %s codebook (%d needed); this shard stores float16", self.index_dir,
                     len(embeddings), shard_dtype(manifest), min_fit_items(embeddings.shape[1]))
            return None
        codec, book = fit_codebook(self.index_dir, shard_dtype(manifest), embeddings)
        manifest["storage"] = {**(manifest.get("storage") or {}), "codebook": book}
        return codec

    def _storage_for_chain(self, manifest: dict, sample: np.ndarray, choice) -> None:
        """Once ``auto`` storage has an approximate chain to search with, store new shards in the
        fewest bytes that cost the *chain's* held-out recall@10 at most
        :data:`~medcbir.indexer.recall.STORAGE_TOLERANCE` (:func:`~medcbir.indexer.recall.choose_chain_storage`),
        not exact search's: the chain's own approximation already bounds what it finds. Recorded
        in ``storage.chain``; shards already written keep their storage (each shard says how it
        stores its embeddings), compaction rewrites them in the new one."""
        record = manifest.get("storage") or {}
        current = record.get("dtype")
        if record.get("requested") != "auto" or current not in STORAGE_ORDER:
            return
        smaller = [d for d in recall.CHAIN_STORAGES if STORAGE_BYTES[d] < STORAGE_BYTES[current]]
        if not smaller:
            return
        measured = recall.choose_chain_storage(sample, choice.spec, choice.params, int(manifest.get("shard_size") or self.shard_size),
                                               storages=tuple(smaller))
        log.info("index %s: chain %s over %s shards %.4f; %s", self.index_dir, choice.spec, current, measured["reference"],
                 ", ".join(f"{d} {r}" for d, r in measured["tried"].items()))
        manifest["storage"] = {**record, "dtype": measured["dtype"] or current, "chain": {**measured, "from": current}}
        if is_transform(measured["dtype"]):  # its codebook, fitted on the training sample the chain was measured on
            manifest["storage"]["codebook"] = fit_codebook(self.index_dir, measured["dtype"], sample)[1]
        elif measured["dtype"]:
            manifest["storage"].pop("codebook", None)

    def _setup_regions(self, wanted: bool | None, per_image: int | None) -> None:

        record = self.manifest.get("regions")
        created = not self.manifest["shards"] and not manifest_path(self.index_dir).is_file()
        if created and wanted:
            per_image = int(per_image if per_image is not None else PER_IMAGE)
            if per_image < 1:
                raise ConfigError(f"--regions-per-image must be ≥ 1, not {per_image}")
            record = {"version": REGIONS_VERSION, "dim": DIM, "per_image": per_image}
            self.manifest = dict(self.manifest, regions=record)
        elif wanted and not record:
            raise ConfigError(f"index {self.index_dir} was built without regions; `medcbir index ARCHIVE --out {self.index_dir} "
                              "--refresh-regions` adds them in place (the slices are not embedded again)")
        elif wanted is False and record:
            raise ConfigError(f"index {self.index_dir} stores regions for every item; --no-regions applies to a new index only")
        if record and record.get("version") != REGIONS_VERSION:
            raise ConfigError(f"index {self.index_dir} holds regions of recipe {record.get('version')!r}; this medcbir makes "
                              f"{REGIONS_VERSION!r}: `medcbir index ARCHIVE --out {self.index_dir} --refresh-regions` re-describes "
                              "them in place, then items can be added")
        if self.manifest.get("regions_refresh"):
            raise ConfigError(f"index {self.index_dir}: a region refresh is under way; finish it (`medcbir index ARCHIVE "
                              f"--out {self.index_dir} --refresh-regions`) before adding items")
        self.regions = record or None

    @property
    def decode_preprocessing(self):
        """What decoding for this writer applies: the encoder's preprocessing, wrapped to extract
        each item's regions too when the index stores regions (:class:`~medcbir.encoders.regions.WithRegions`)."""
        if not self.regions:
            return self.encoder.preprocessing

        return WithRegions(self.encoder.preprocessing, int(self.regions["per_image"]))

    def _refuse_damaged(self, manifest: dict) -> None:
        """Refuse to add to an index a committed file of which is damaged: items committed on
        top of it would be counted while searches fail (the repair drops the damaged shard)."""
        # On a large index the shards' checksums go on in the background while the writer
        # embeds (deferred_checks); :meth:`_require_intact` waits for them before the first commit.
        try:
            pending, self._checks = start_checks(self.index_dir, manifest, "checksums", defer=True)
            finish_checks(pending)
            if self._checks is not None:
                self._checks.start()
        except IndexCorrupt as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: IndexCorrupt) -> IndexCorrupt:
        return IndexCorrupt(f"{exc}; `medcbir verify --repair {self.index_dir}` drops the damaged shard's items "
                            "and the next `medcbir index` run embeds them again")

    def _require_intact(self) -> None:
        """Wait for the committed shards' checksums deferred at open (a large index), once.

        Raises:
            IndexCorrupt: a committed file is damaged (nothing is committed on top of it).
        """
        checks, self._checks = getattr(self, "_checks", None), None
        if checks is None:
            return
        try:
            checks.wait()
        except IndexCorrupt as exc:
            self._checks = checks  # every later commit refuses too
            raise self._damaged(exc) from None

    def _load_committed_keys(self) -> None:
        for entry in self.manifest["shards"]:
            if entry["sha256"] in self._known_shards:
                continue
            self._known_shards.add(entry["sha256"])
            self._remember_shard(self.index_dir / entry["file"])

    def _remember_shard(self, path: Path) -> list[int]:
        keys, sources = self._shard_keys(path)
        self._keys.update(keys)
        self._sources.update(sources)
        return keys

    @staticmethod
    def _shard_keys(path: Path, of_sources: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(key hashes, source hashes) of a shard's items (``of_sources``: of those items alone)."""
        import h5py

        with h5py.File(path, "r") as f:
            stored = f.get("key_hashes")
            if of_sources is None and stored is not None and "item" in stored and "source" in stored:
                sources = np.unique(stored["source"][...])
                return stored["item"][...], sources[sources != 0]
            meta = f["meta"]
            sops, frames = meta["sop_instance_uid"][...], meta["frame"][...]
            sources = meta["source"][...] if "source" in meta else np.zeros(len(sops), dtype="S1")
        if of_sources is not None:
            rows = np.isin(sources, of_sources)
            sops, frames, sources = sops[rows], frames[rows], sources[rows]
        unique_sources = np.unique(sources)
        return key_hashes(sops, frames), source_hashes(unique_sources[unique_sources != b""])

    def key_hashes(self) -> np.ndarray:
        """uint64 :func:`key_hash` of every committed item (for a distributed de-duplicator)."""
        return self._keys.to_array()

    def commit_shards(self, entries: list[dict]) -> int:
        """Commit shards that other processes wrote (the Ray indexer's actors), in one generation.

        Each shard must already be committed on disk under its final name (``write_shard``)
        and continue the id range: ``entries[0]["first_id"] == next_id``, each next one
        following the previous. FAISS parts are written here when the index is trained.

        Args:
            entries: manifest shard records ``{file, items, bytes, sha256, first_id, last_id, faiss}``.

        Returns:
            the number of items committed.

        Raises:
            ConfigError: the entries do not continue the committed id range.
        """
        if not entries:
            return 0
        if self._buffer_metas:
            raise ConfigError("commit the buffered items before committing shards written elsewhere")
        with WriterLock(self.index_dir, wait=True, timeout=self._lock_timeout):
            self._refresh()  # the id range must continue the newest generation
            return self._commit_shards_locked(entries)

    def _commit_shards_locked(self, entries: list[dict]) -> int:
        manifest = dict(self.manifest)
        manifest["shards"] = list(manifest["shards"])
        for entry in entries:
            entry = dict(entry)
            storage = entry.pop("storage", None)
            record = manifest.get("storage") or {}
            if storage and ((not record.get("dtype") and record.get("requested") == "auto")
                            or (is_transform(record.get("dtype")) and not record.get("codebook") and storage.get("codebook"))):
                manifest["storage"] = dict(storage)  # an actor measured the auto choice or fitted the codebook (the Ray indexer)
            if int(entry["first_id"]) != int(manifest["next_id"]) or int(entry["last_id"]) - int(entry["first_id"]) + 1 != int(entry["items"]):
                raise ConfigError(f"{entry['file']}: ids {entry['first_id']}..{entry['last_id']} do not continue the index at id {manifest['next_id']}")
            number = int(entry["file"].split("-")[1].split(".")[0])
            if self._trained is not None and not entry.get("faiss"):

                ids = np.arange(entry["first_id"], entry["last_id"] + 1, dtype=np.int64)
                entry["faiss"] = self._write_shard_faiss(number, ids, read_embeddings(self.index_dir / entry["file"]))
            stamp(entry, self.index_dir)
            manifest["shards"].append(entry)
            manifest["next_id"] = int(entry["last_id"]) + 1
            manifest["next_shard"] = max(int(manifest["next_shard"]), number + 1)
            self._known_shards.add(entry["sha256"])
            self._count_reembedded(self._remember_shard(self.index_dir / entry["file"]))
            self.shards_written += 1
            self.items_committed += int(entry["items"])
        self._commit_manifest(manifest, train=self._needs_training(final=False, manifest=manifest))
        return sum(int(e["items"]) for e in entries)

    # ------------------------------------------------------------------ queries
    @property
    def items(self) -> int:
        """Committed items (including tombstoned ones)."""
        return int(self.manifest["next_id"])

    @property
    def buffered(self) -> int:
        return len(self._buffer_metas)

    def has_source(self, source: str) -> bool:
        """True when every item of ``source`` (a path or URI) is committed or buffered."""
        return source_hash(str(source)) in self._sources or source_hash(str(source)) in self._buffer_sources

    def has_key(self, sop_uid: str, frame: int) -> bool:
        """True when the item ``(sop_uid, frame)`` is committed or buffered (tombstoned ones too)."""
        h = key_hash(sop_uid, frame)
        return h in self._keys or h in self._buffer_keys

    # ------------------------------------------------------------------ adding
    def add(self, decoded: list) -> int:
        """Embed and buffer decoded items; commits a shard whenever the buffer is full.

        Args:
            decoded: ``Decoded(meta, image)`` with images preprocessed for this encoder.

        Returns:
            how many items were new (the rest were already in the index).
        """
        fresh, seen = [], set()
        for d in decoded:
            h = key_hash(d.meta.sop_instance_uid, d.meta.frame)
            if h in seen or self.has_key(d.meta.sop_instance_uid, d.meta.frame):
                continue
            seen.add(h)
            fresh.append(d)
        if not fresh:
            return 0
        regions = None
        if self.regions:
            regions = [d.extras.get("regions") for d in fresh]
            if any(r is None for r in regions):
                raise ConfigError("this index stores regions: decode with IndexWriter.decode_preprocessing "
                                  "so each item carries its regions")
        images = np.stack([np.asarray(d.image, dtype=np.float32) for d in fresh])
        embeddings = self.encoder.embed(images, batch_size=self.batch_size) if self.batch_size else self.encoder.embed(images)
        return self.add_embeddings([d.meta for d in fresh], embeddings, regions)

    def add_embeddings(self, metas: list, embeddings: np.ndarray, regions: list | None = None) -> int:
        """Buffer already-computed embeddings (L2-normalised, this encoder's) with their metadata.

        Args:
            regions: one :class:`~medcbir.encoders.regions.RegionSet` per item, for an index that
                stores regions (an item without regions: an empty set).

        Returns:
            how many items were new.
        """
        if self.regions and regions is None:
            raise ConfigError("this index stores regions: pass each item's RegionSet (regions=)")
        if regions is not None and len(regions) != len(metas):
            raise ConfigError(f"{len(metas)} items but {len(regions)} region sets")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(metas):
            raise ConfigError(f"{len(metas)} items but embeddings of shape {embeddings.shape}")
        if embeddings.shape[1] != self.encoder.dim:
            raise ConfigError(f"embeddings are {embeddings.shape[1]}-d; this index holds {self.encoder.dim}-d")
        keep = []
        for i, meta in enumerate(metas):
            h = key_hash(meta.sop_instance_uid, meta.frame)
            if h in self._keys or h in self._buffer_keys:
                continue
            self._buffer_keys.add(h)
            self._buffer_sources.add(source_hash(str(meta.source)))
            keep.append(i)
        if not keep:
            return 0
        self._buffer_metas.extend(metas[i] for i in keep)
        self._buffer_regions.extend((regions[i] if regions is not None and self.regions else None) for i in keep)
        self._buffer_embeddings.append(embeddings[keep] if len(keep) < len(metas) else embeddings)
        self._commit_full_shards()
        return len(keep)

    def _commit_full_shards(self) -> None:
        # Commit shard_size-sized prefixes, extended to the end of the source they stop in;
        # the last source of the buffer may continue in the next batch, so it waits.
        while len(self._buffer_metas) >= self.shard_size:
            metas = self._buffer_metas
            cut = self.shard_size
            last = metas[cut - 1].source
            while cut < len(metas) and metas[cut].source == last:
                cut += 1
            if cut == len(metas):
                return
            self._commit_prefix(cut)

    def _take_buffer(self, n: int) -> tuple[list, np.ndarray, list]:
        embeddings = np.concatenate(self._buffer_embeddings) if len(self._buffer_embeddings) > 1 else self._buffer_embeddings[0]
        metas = self._buffer_metas[:n]
        regions = self._buffer_regions[:n]
        self._buffer_metas = self._buffer_metas[n:]
        self._buffer_regions = self._buffer_regions[n:]
        rest = embeddings[n:]
        self._buffer_embeddings = [rest] if len(rest) else []
        return metas, embeddings[:n], regions

    def _commit_prefix(self, n: int) -> None:
        metas, embeddings, regions = self._take_buffer(n)
        self._write_shards(metas, embeddings, regions)
        keys = {key_hash(m.sop_instance_uid, m.frame) for m in metas}
        sources = {source_hash(str(m.source)) for m in metas}
        self._count_reembedded(keys)
        self._keys |= keys
        self._sources |= sources
        self._buffer_keys -= keys
        self._buffer_sources = {source_hash(str(m.source)) for m in self._buffer_metas}

    def _count_reembedded(self, keys) -> None:
        if self._dropped_keys:
            self.reembedded += sum(1 for k in keys if k in self._dropped_keys)

    def note_source(self, recorded: str, size: int, mtime_ns: int) -> None:
        """Remember the size and mtime of a source file seen before it was decoded; its shard
        records them (``sources/``) so a later run notices the file changed."""
        self._source_stats[str(recorded)] = (int(size), int(mtime_ns))

    def settle_dropped(self) -> tuple[int, int, int]:
        """After a complete indexing run: forget the keys a repair dropped (a new generation).

        Returns:
            (items the repair had dropped, of them re-embedded by this writer (by key), of them
            whose key the damage had made unreadable: those are among the indexed items when
            their files were there, but cannot be told apart).
        """
        record = self.manifest.get("dropped")
        if not record:
            return 0, 0, 0
        with WriterLock(self.index_dir, wait=True, timeout=self._lock_timeout):
            self._refresh()
            if self.manifest.get("dropped"):
                manifest = dict(self.manifest)
                manifest.pop("dropped")
                self._commit_manifest(manifest, train=False)
        items = int(record.get("items", 0))
        return items, self.reembedded, max(0, items - int(record.get("keys", 0)))

    def archive_root(self, root: str | Path) -> str:
        """The folder file sources are recorded relative to (see :meth:`archive_seal`)."""
        return str(self.archive_seal(root).root)

    def archive_seal(self, root: str | Path):
        """The :class:`~medcbir.imaging.source_seal.SourceSeal` file sources are recorded with.

        Its root is the first archive indexed, kept sealed in the manifest (``archive_root``)
        from the next commit on (an index that recorded it plain gets it sealed at its next
        commit); a later archive elsewhere is recorded relative to the same root (``../``),
        so one root opens all.

        Raises:
            IndexCorrupt: the recorded root does not open with this index's pseudonym key.
        """
        recorded = self.manifest.get("archive_root")
        try:
            seal = SourceSeal.from_record(self.key, recorded) if recorded else SourceSeal(self.key, root)
        except ValueError as exc:
            raise IndexCorrupt(f"{self.index_dir}: {exc} (is --key-file the index's pseudonym key?)") from None
        self._root_seal = seal
        return seal

    def _seal_root(self, manifest: dict) -> bool:
        """Record this writer's archive root in ``manifest`` (sealed) when it has none or keeps
        the same root plain; True when that changed the manifest."""
        seal = getattr(self, "_root_seal", None)
        recorded = manifest.get("archive_root")
        if seal is None or (recorded and (is_sealed(recorded) or Path(recorded) != seal.root)):
            return False
        manifest["archive_root"] = seal.root_record()
        return True

    # ------------------------------------------------------------------ deleting
    def committed_sources(self) -> set[str]:
        """Every source recorded by a committed item (tombstoned ones included)."""
        import h5py

        out: set[str] = set()
        for entry in self.manifest["shards"]:
            with h5py.File(self.index_dir / entry["file"], "r") as f:
                if "source" in f["meta"]:
                    out.update(s.decode("utf-8") for s in np.unique(f["meta"]["source"][...]))
        return out

    def delete_sources(self, sources) -> int:
        """Tombstone every committed item whose source is one of ``sources`` (a new generation).

        A long-lived writer (the Orthanc plugin's worker) deletes through it rather than
        through :func:`medcbir.indexer.maintenance.delete`; buffered items of those sources are
        dropped. The sources still count as committed (:meth:`release_sources` lets one be
        indexed again). It queues for the writer lock like a commit.

        Returns:
            how many items were newly tombstoned (``deleted_sources``: of how many sources).
        """
        self.deleted_sources = 0
        wanted = {str(s) for s in sources}
        if not wanted:
            return 0
        keep = [i for i, m in enumerate(self._buffer_metas) if str(m.source) not in wanted]
        if len(keep) < len(self._buffer_metas) and self._buffer_metas:
            embeddings = np.concatenate(self._buffer_embeddings)
            self._buffer_metas = [self._buffer_metas[i] for i in keep]
            self._buffer_regions = [self._buffer_regions[i] for i in keep]
            self._buffer_embeddings = [embeddings[keep]] if keep else []
            self._buffer_keys = {key_hash(m.sop_instance_uid, m.frame) for m in self._buffer_metas}
            self._buffer_sources = {source_hash(str(m.source)) for m in self._buffer_metas}
        with WriterLock(self.index_dir, wait=True, timeout=self._lock_timeout):
            self._refresh()
            return self._delete_sources_locked(wanted)

    def _delete_sources_locked(self, wanted: set[str]) -> int:
        import h5py


        needles = np.array([s.encode("utf-8") for s in wanted])
        found, hit_sources = [], []
        for entry in self.manifest["shards"]:
            with h5py.File(self.index_dir / entry["file"], "r") as f:
                if "source" in f["meta"]:
                    column = f["meta"]["source"][...]
                    hit = np.isin(column, needles)
                    found.append(f["ids"][...][hit])
                    hit_sources.append(column[hit])
        hits = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        before = deleted_ids(self.index_dir, self.manifest)
        new = np.setdiff1d(hits, before)
        if new.size:
            fresh = ~np.isin(hits, before)
            self.deleted_sources = int(np.unique(np.concatenate(hit_sources)[fresh]).size)
        if new.size:
            manifest = dict(self.manifest)
            store_deleted(self.index_dir, manifest, np.union1d(before, new))
            self._commit_manifest(manifest, train=False)
        return int(new.size)

    def release_sources(self, sources) -> None:
        """Let the tombstoned items of ``sources`` be indexed again (their file changed or came
        back): their keys and sources no longer count as committed for this writer."""
        needles = np.array([str(s).encode("utf-8") for s in sources])
        if not needles.size:
            return
        for entry in self.manifest["shards"]:
            keys, hashes = self._shard_keys(self.index_dir / entry["file"], needles)
            self._keys.difference_update(keys)
            self._sources.difference_update(hashes)

    # ------------------------------------------------------------------ committing
    def commit(self) -> int:
        """Commit everything buffered (as shards of at most ``shard_size``) in one new generation.

        Returns:
            the number of items committed.
        """
        n = len(self._buffer_metas)
        if n:
            self._commit_prefix(n)
        return n

    def close(self) -> None:
        """Commit the buffer, train the FAISS index if its spec still needs it, release the lock."""
        if not self._open:
            return
        try:
            self._require_intact()
            self.commit()
            with WriterLock(self.index_dir, wait=True, timeout=self._lock_timeout):
                self._refresh()
                if self._needs_training(final=True):
                    self._commit_manifest(dict(self.manifest), train=True)
                elif not manifest_path(self.index_dir).is_file() or self._seal_root(dict(self.manifest)):
                    # An empty index is still an index; a root recorded plain gets sealed.
                    self._commit_manifest(dict(self.manifest), train=False)
                self._remeasure_if_grown()
                self._persist_lists()
                if "similarity" not in self.manifest and self.manifest.get("shards"):
                    # an index from before similarity samples: drawn once, in its own generation
                    manifest = dict(self.manifest)
                    if self._sample_similarity(manifest):
                        self.manifest = commit_manifest(self.index_dir, manifest)
        finally:
            self._open = False
            self._stop_checks()

    def _stop_checks(self) -> None:
        checks = getattr(self, "_checks", None)
        if checks is not None:
            checks.close()

    def _sample_similarity(self, manifest: dict) -> bool:
        """Put the archive's query–neighbour similarity sample (:mod:`medcbir.indexer.similarity`)
        into ``manifest`` about to be committed, when the index grew enough since the last one;
        True if it was drawn. Its shards are on disk already, so it goes into the same generation."""

        if not similarity.due(manifest) or not manifest.get("shards"):
            return False
        record = similarity.sample_committed(self.index_dir, manifest)
        if record is not None:
            manifest["similarity"] = record
        return record is not None

    def _remeasure_if_grown(self) -> None:
        """Re-measure recall (and re-pick the trained spec's search parameters) on the whole
        committed index once it has grown enough since the last measurement
        (:mod:`medcbir.indexer.remeasure`); a result below the target makes retraining due."""

        if remeasure.due(self.manifest):
            self.manifest = commit_manifest(self.index_dir, remeasure.measure_committed(self.index_dir, self.manifest))

    def _persist_lists(self) -> None:
        """Write the filled inverted lists of the trained index (:func:`~medcbir.indexer.faiss_files.filled_base`)
        to ``lists-G.faiss`` and commit them in a new generation, when at least :data:`LISTS_TAIL`
        committed items are not in the current ones: opening then maps them
        (:func:`~medcbir.indexer.faiss_files.mapped_base`) and fills only the later shards' codes,
        so that it does not grow with the archive. Written at the writer's close, not at every
        commit (the file holds every item's code: rewriting it per shard would cost as much as
        the open it saves); a crash before the manifest commit leaves an orphan that the next
        writer removes."""
        m = self.manifest
        if not m.get("trained") or faiss_index.is_flat(m["index_spec"]) or not m.get("shards"):
            return
        record = faiss_index.covered_lists(m)
        if int(m["next_id"]) - (int(record["items"]) if record else 0) < LISTS_TAIL:
            return
        trained = self._trained if self._trained is not None else faiss.read_index(str(self.index_dir / m["trained"]["file"]))
        if not faiss_index.persistable(trained) or any(not s.get("faiss") or not s["faiss"]["file"].endswith(".codes.npy") for s in m["shards"]):
            return
        index = faiss_index.filled_base(trained, [self.index_dir / s["faiss"]["file"] for s in m["shards"]])
        path = self.index_dir / f"lists-{int(m['generation']) + 1:06d}.faiss"
        size, digest = faiss_index.write_index(index, path, hook="lists-fsync")
        del index
        manifest = dict(m)
        manifest["lists"] = stamp({"file": path.name, "bytes": size, "sha256": digest, "items": int(m["next_id"]),
                                   "shards": len(m["shards"]), "trained": m["trained"]["file"],
                                   "codes": faiss_index.codes_digest(m["shards"])}, self.index_dir)
        self.manifest = commit_manifest(self.index_dir, manifest)
        remove_orphans(self.index_dir, self.manifest)

    def abort(self) -> None:
        """Close without committing the buffer (after an error mid-source)."""
        self._open = False
        self._stop_checks()

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _refresh(self) -> None:
        """Adopt the newest committed manifest (call holding the lock): another writer, a
        compaction or a retraining may have committed since this writer last looked."""
        try:
            current = read_manifest(self.index_dir)
        except IndexNotFound:
            return  # nothing committed yet: this writer creates the index
        except IndexCorrupt as exc:

            current, self.recovery = fallback_manifest(self.index_dir, exc)
        if current["encoder"]["fingerprint"] != self.manifest["encoder"]["fingerprint"]:
            raise EncoderMismatch(f"index {self.index_dir} was created meanwhile with encoder {current['encoder']['fingerprint'][:12]}")
        if (current.get("regions") or {}).get("version") != (self.regions or {}).get("version") or current.get("regions_refresh"):
            # a region refresh committed meanwhile: this writer's items lack regions of the index's recipe
            raise ConfigError(f"index {self.index_dir}: its regions are being re-described (`--refresh-regions`); "
                              "add the items after it ends")
        if current.get("trained") != self.manifest.get("trained"):
            import faiss

            self._trained = faiss.read_index(str(self.index_dir / current["trained"]["file"])) if current.get("trained") else None
        self.manifest = current
        self._apply_requests()
        self._load_committed_keys()

    def _write_shards(self, metas: list, embeddings: np.ndarray, regions: list) -> None:
        with WriterLock(self.index_dir, wait=True, timeout=self._lock_timeout):
            self._refresh()
            # Items another writer committed since they were buffered here are dropped.
            fresh = [i for i, m in enumerate(metas) if key_hash(m.sop_instance_uid, m.frame) not in self._keys]
            if len(fresh) < len(metas):
                metas = [metas[i] for i in fresh]
                embeddings = embeddings[fresh]
                regions = [regions[i] for i in fresh]
            if metas:
                self._write_shards_locked(metas, embeddings, regions)

    def _write_shards_locked(self, metas: list, embeddings: np.ndarray, regions: list) -> None:
        manifest = dict(self.manifest)
        manifest["shard_size"] = self.shard_size  # compaction fills shards to it
        manifest["shards"] = list(manifest["shards"])
        # A shard holds at most shard_size items unless one source alone is larger.
        start = 0
        while start < len(metas):
            stop = min(start + self.shard_size, len(metas))
            while stop < len(metas) and metas[stop].source == metas[stop - 1].source:
                stop += 1
            self._write_one_shard(manifest, metas[start:stop], embeddings[start:stop], regions[start:stop])
            start = stop
        self._commit_manifest(manifest, train=self._needs_training(final=False, manifest=manifest))

    def _write_one_shard(self, manifest: dict, metas: list, embeddings: np.ndarray, regions: list) -> None:
        number = int(manifest["next_shard"])
        first = int(manifest["next_id"])
        ids = np.arange(first, first + len(metas), dtype=np.int64)
        path = self.index_dir / shard_name(number)
        stats = {src.encode("utf-8"): self._source_stats.pop(src) for src in {str(m.source) for m in metas} if src in self._source_stats}
        block = shard_regions(regions, int(self.regions["dim"])) if self.regions else None
        self._decide_shard_dtype(manifest, embeddings)
        dtype = shard_dtype(manifest)
        dtype, codec, coded = coded_storage(dtype, self._shard_codec(manifest, embeddings) if is_transform(dtype) else None, embeddings,
                                            path.name)
        size, digest = write_shard(path, ids, embeddings, meta_columns(metas), manifest["encoder"], stats, block,
                                   self.regions["version"] if self.regions else "", dtype=dtype, codec=codec, stored=coded)
        entry = {"file": path.name, "items": len(metas), "bytes": size, "sha256": digest,
                 "first_id": first, "last_id": first + len(metas) - 1, "faiss": None}
        if codec is not None:
            entry["codebook"] = codebook_entry(manifest["storage"]["codebook"])
        if self._trained is not None:
            entry["faiss"] = self._write_shard_faiss(number, ids, embeddings)
        stamp(entry, self.index_dir)
        manifest["shards"].append(entry)
        manifest["next_id"] = first + len(metas)
        manifest["next_shard"] = number + 1
        self.shards_written += 1
        self.items_committed += len(metas)

    def _write_shard_faiss(self, number: int, ids: np.ndarray, embeddings: np.ndarray) -> dict:
        base, _ = faiss_index.parts(self._trained)
        return stamp(faiss_index.write_shard_part(base, ids, embeddings, self.index_dir / f"shard-{number:06d}"), self.index_dir)

    def _needs_training(self, final: bool, manifest: dict | None = None) -> bool:
        m = manifest or self.manifest
        n = int(m["next_id"])
        dim = int(m["encoder"]["dim"])
        if m.get("trained") or m.get("recall"):  # trained, or measured and kept exact
            return False
        if m.get("index_spec_requested", "auto") == "auto":
            return n >= faiss_index.AUTO_FLAT_MAX
        spec = m["index_spec"]
        if faiss_index.is_flat(spec):
            return False
        if not faiss_index.needs_training(spec, dim):  # e.g. HNSW: the "trained" file is the empty template
            return n > 0
        return n >= faiss_index.TRAIN_SAMPLE or (final and n >= faiss_index.min_train_items(spec, dim))

    def _commit_manifest(self, manifest: dict, train: bool) -> None:
        self._require_intact()
        if train:
            self._train(manifest)
        self._seal_root(manifest)
        self._sample_similarity(manifest)
        self.manifest = commit_manifest(self.index_dir, manifest)

    def _train(self, manifest: dict) -> None:
        """Choose (``auto``) and train the spec on a sample of committed embeddings, measure its
        recall@10 on them (:mod:`medcbir.indexer.recall`), write FAISS files for every shard."""

        auto = manifest.get("index_spec_requested", "auto") == "auto"
        n = int(manifest["next_id"])
        rng = np.random.default_rng(0)
        sample_ids = np.sort(rng.choice(n, size=faiss_index.train_sample(n), replace=False))
        parts = []
        for entry in manifest["shards"]:
            lo, hi = entry["first_id"], entry["last_id"] + 1
            rows = sample_ids[(sample_ids >= lo) & (sample_ids < hi)] - lo
            if len(rows):
                parts.append(read_embeddings(self.index_dir / entry["file"], rows))
        sample = np.concatenate(parts)
        target = float(manifest.get("target_recall") or recall.TARGET_RECALL)
        specs = None if auto else [manifest["index_spec"]]
        budget = manifest.get("memory_budget")
        try:
            choice, trained = recall.choose(sample, target, specs=specs, budget=budget, items=n)
        except RuntimeError as exc:
            log.warning("could not train %s on %d items (%s); the index stays exact", specs or "auto", len(sample), exc)
            return
        manifest["recall"] = {**choice.record(), "at_items": n, "chain": describe(choice.spec, int(manifest["encoder"]["dim"])),
                              **({"memory_budget": budget} if budget is not None else {})}
        if choice.recall_at_10 < target:
            log.warning("index %s: recall@10 %.3f of %s is below the target %.2f", self.index_dir, choice.recall_at_10, choice.spec, target)
        if trained is None:  # auto chose exact search: nothing to train, nothing per shard
            manifest["index_spec"] = "Flat"
            manifest["search_params"] = {}
            return
        spec = choice.spec
        generation = int(manifest["generation"]) + 1
        path = self.index_dir / f"trained-{generation:06d}.faiss"
        size, digest = faiss_index.write_index(trained, path)
        self._trained = trained
        manifest["trained"] = stamp({"file": path.name, "bytes": size, "sha256": digest, "items": int(len(sample)), "at_items": n},
                                    self.index_dir)
        manifest["index_spec"] = spec
        manifest["search_params"] = dict(choice.params)
        self._storage_for_chain(manifest, sample, choice)
        manifest["shards"] = [dict(s) for s in manifest["shards"]]
        for entry in manifest["shards"]:
            number = int(entry["file"].split("-")[1].split(".")[0])
            ids = np.arange(entry["first_id"], entry["last_id"] + 1, dtype=np.int64)
            entry["faiss"] = self._write_shard_faiss(number, ids, read_embeddings(self.index_dir / entry["file"]))
