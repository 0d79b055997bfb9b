"""Read access to a committed index: :class:`IndexStore` (what the engine searches).

Opening reads the manifest once and works on that generation only: later commits by a
writer (new shards, tombstones, compaction) are not seen until the index is opened again.
Nothing per item becomes a Python object: ids are a numpy array, the metadata columns stay in
the shards (:mod:`medcbir.indexer.columns` reads rows and holds compact codes for search), and
the FAISS index is filled from the shards' embeddings or merged from per-shard FAISS files.
"""

from __future__ import annotations

import json
import mmap
import time
from pathlib import Path

import faiss
import h5py
import numpy as np

from medcbir.errors import ConfigError, IndexCorrupt
from medcbir.imaging.items import ItemMeta
from medcbir.imaging.source_seal import SourceSeal, is_sealed
from medcbir.indexer import faiss_index
from medcbir.indexer.integrity import finish_checks, start_checks
from medcbir.indexer.manifest import deleted_ids, read_manifest
from medcbir.indexer.rerank import RerankFromRows
from medcbir.indexer.columns import ShardColumns
from medcbir.indexer.shard import Decoder, ShardRegions
from medcbir.indexer.generations import fallback_manifest

def read_key(index_dir: Path, manifest: dict) -> bytes | None:
    """The archive's pseudonym key (``INDEX/pseudonym.key`` or the manifest's ``key_file``), or None."""
    path = Path(manifest["key_file"]) if manifest.get("key_file") else Path(index_dir) / "pseudonym.key"
    return path.read_bytes() if path.is_file() else None


def seal_of(index_dir: Path, manifest: dict, key: bytes | None = None):
    """The :class:`~medcbir.imaging.source_seal.SourceSeal` opening an index's folder sources,
    with ``key`` or the index's own; None without a recorded root, without a key, or when the
    key does not open the root."""
    key = key if key is not None else read_key(index_dir, manifest)
    root = manifest.get("archive_root")
    if key is None or not root:
        return None
    try:
        return SourceSeal.from_record(key, root)
    except ValueError:
        return None


class IndexStore:
    """A committed index generation, opened for reading.

    Attributes:
        manifest: the manifest dict of the opened generation.
        generation: its generation number.
        dim, metric, index_spec: from the manifest (``index_spec`` is the spec in use).
        encoder_info: ``{"fingerprint", "preprocessing", "dim", "source"}``.
        ids: int64 (N,) all committed items in shard order (dense: ``ids[i] == i``).
        columns: the metadata columns (:class:`~medcbir.indexer.columns.ShardColumns`): rows read
            from the shards, compact codes for filters and groups built on first use; as a
            mapping, ``columns[name]`` reads a whole column (strings as ``<U``) and keeps nothing.
        deleted: sorted int64 tombstoned ids.
        live_mask: bool (N,), False for tombstoned items.
        faiss_index: all committed items searched under their int64 ids (tombstoned ones
            still inside: exclude them with an id selector, e.g. from ``live_mask``).
        exact: True when ``faiss_index`` is brute force.
        gpu_index: a GPU copy of ``faiss_index`` (None on CPU or when the type cannot move).
        gpu_path: which path searches run on and why (e.g. ``"cpu: IndexHNSWFlat cannot run on a GPU"``).
        search_params: current defaults (``nprobe``, ``k_factor``, ...).
        open_seconds: wall time of :meth:`open`.
        open_stages: its parts in seconds: ``manifest``, ``checks_first`` (sizes, and the
            checksums of FAISS and tombstone files), ``shards`` (opening the HDF5 shards),
            ``faiss`` (the rest of loading: building the FAISS index), ``checks_wait`` (waiting
            for the shards' and codes' checksums hashed in the background meanwhile).
        recovery: a :class:`~medcbir.indexer.recovery.Recovery` when ``manifest.json`` was
            damaged and an older kept generation was opened instead (a warning is logged), else None.
    """

    def __init__(self) -> None:  # use IndexStore.open
        self._files: list[h5py.File] = []
        self._decoders: list[Decoder] = []
        self._maps: list | None = None  # each shard's embeddings memory-mapped (on first re-rank)
        self.checks = None  # DeferredChecks of a large index's shards, still hashing after open
        self.open_stages: dict[str, float] = {}

    @classmethod
    def open(cls, index_dir: str | Path, *, verify: str = "checksums", device=None, manifest: dict | None = None,
             build_index: bool = True) -> "IndexStore":
        """Open the committed generation of ``index_dir``.

        Args:
            index_dir: the index folder.
            verify: ``"checksums"`` (the fast whole-file checksum of every committed file,
                sha256 for entries that predate it), ``"sha256"`` (whole-file sha256 of every
                file, hashed in parallel), ``"sizes"`` (existence and size only) or ``"none"``.
                Above :data:`~medcbir.indexer.deferred_checks.DEFER_BYTES` of shard files the
                shards' checksums finish after open (:attr:`checks`): :meth:`ensure_checked`
                holds each answer until the shards it comes from have matched.
            device: a :class:`~medcbir.device.Device`; FAISS moves to GPU when ``faiss_gpu``.
            manifest: open this manifest instead of the committed one (the sharded engine opens
                a part of an index: a contiguous run of its shards, ids shifted to start at 0).
            build_index: False = metadata and embeddings only, ``faiss_index`` is None (the
                sharded engine's driver, whose actors hold the FAISS parts).

        Raises:
            IndexNotFound: no index there.
            IndexCorrupt: naming the broken file (checksum, size, shape or fingerprint).
        """
        start = time.perf_counter()
        self = cls()
        self.index_dir = Path(index_dir)
        self.recovery = None
        self._build_index = build_index
        if manifest is not None:
            self.manifest = manifest
        else:
            try:
                self.manifest = read_manifest(self.index_dir)
            except IndexCorrupt as exc:
                # A damaged manifest.json: the newest intact kept generation, with a warning.

                self.manifest, self.recovery = fallback_manifest(self.index_dir, exc)
                self.manifest["generation"] = self.recovery.generation
        self.open_stages = {"manifest": time.perf_counter() - start}
        pending, self.checks = start_checks(self.index_dir, self.manifest, verify, defer=True)
        self.open_stages["checks_first"] = time.perf_counter() - start - sum(self.open_stages.values())
        try:
            self._load(device)
        except BaseException:
            self.close()
            finish_checks(pending)  # a corrupt shard is named as such, not as a load error
            raise
        self.open_stages["faiss"] = time.perf_counter() - start - sum(self.open_stages.values())
        if self.checks is not None:
            self.checks.start()  # after the open's own reads, which it would slow
        finish_checks(pending)
        self.open_stages["checks_wait"] = time.perf_counter() - start - sum(self.open_stages.values())
        self.open_seconds = time.perf_counter() - start
        return self

    def _load(self, device) -> None:
        m = self.manifest
        self.generation = int(m["generation"])
        self.encoder_info = dict(m["encoder"])
        self.dim = int(self.encoder_info["dim"])
        self.metric = m.get("metric", "ip")
        self.index_spec = m["index_spec"]
        self.search_params = dict(m.get("search_params") or {})
        if m.get("index_spec_requested") == "auto" and m.get("trained") and not m.get("recall"):
            # Indexes from before recall was measured follow the current defaults of the auto spec.
            self.search_params = faiss_index.default_search_params(self.index_spec, auto=True)
        self.deleted = deleted_ids(self.index_dir, m, verify=False)  # checked above
        started = time.perf_counter()
        self._open_shards()
        self.open_stages["shards"] = time.perf_counter() - started
        self.live_mask = np.ones(len(self.ids), dtype=bool)
        if self.deleted.size:
            self.live_mask[self.rows(self.deleted, strict=False)] = False
        self._build_faiss(device)

    # ------------------------------------------------------------------ opening
    def _open_shards(self) -> None:
        offsets, names = [0], None
        fingerprint = self.encoder_info["fingerprint"]
        for entry in self.manifest["shards"]:
            path = self.index_dir / entry["file"]
            if not path.is_file():
                raise IndexCorrupt(f"{entry['file']}: committed file is missing from {self.index_dir}")
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise IndexCorrupt(f"{entry['file']}: not a readable HDF5 shard ({exc})") from None
            self._files.append(f)
            try:
                ids_shape = f["ids"].shape
                shape = f["embeddings"].shape
                decoder = Decoder.of(f, self.dim)
                shard_fp = f.attrs["encoder_fingerprint"]
                order = f.attrs.get("columns")
                shard_names = json.loads(order) if order is not None else sorted(f["meta"].keys())
            except (KeyError, ValueError) as exc:
                raise IndexCorrupt(f"{entry['file']}: missing dataset or attribute ({exc})") from None
            shard_fp = shard_fp.decode() if isinstance(shard_fp, bytes) else str(shard_fp)
            if shard_fp != fingerprint:
                raise IndexCorrupt(f"{entry['file']}: encoder fingerprint {shard_fp[:12]} differs from the manifest's {fingerprint[:12]}")
            self._decoders.append(decoder)
            if shape != decoder.stored_shape(entry["items"]) or ids_shape != (entry["items"],):
                raise IndexCorrupt(f"{entry['file']}: holds {shape} embeddings, manifest says {entry['items']}×{self.dim}")
            if entry["first_id"] != offsets[-1] or entry["last_id"] != offsets[-1] + entry["items"] - 1:
                raise IndexCorrupt(f"{entry['file']}: ids {entry['first_id']}..{entry['last_id']} are not dense after id {offsets[-1] - 1}")
            names = shard_names if names is None else names
            # Ids are dense (writer and compaction guarantee it; `verify` reads them all).
            offsets.append(offsets[-1] + entry["items"])
        self.ids = np.arange(offsets[-1], dtype=np.int64)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._dense = bool(len(self.ids) == 0 or (self.ids[0] == 0 and self.ids[-1] == len(self.ids) - 1))
        # An index of an empty archive has no shard to name its columns: the item fields.
        self.columns = ShardColumns(self._files, self._offsets, names or list(ItemMeta.COLUMNS))

    @property
    def has_regions(self) -> bool:
        """True when the index stores regions (``medcbir index`` without ``--no-regions``)."""
        return bool(self.manifest.get("regions"))

    def regions(self):
        """Every region of the index as one :class:`~medcbir.indexer.shard.ShardRegions` whose
        ``rows`` are item ids (tombstoned items included); None for an index without regions.

        Raises:
            IndexCorrupt: a shard of a region index has no ``regions/`` group.
        """
        record = self.manifest.get("regions")
        if not record:
            return None
        parts = list(self.region_parts())
        if not parts:
            return ShardRegions.empty(int(record["dim"]))
        return ShardRegions(*(np.concatenate(column) for column in zip(*parts)))

    def region_parts(self):
        """Each shard's regions in shard order (:class:`~medcbir.indexer.shard.ShardRegions` with
        item ids as ``rows``): what :meth:`regions` concatenates, one shard in memory at a time.

        Raises:
            IndexCorrupt: a shard of a region index has no ``regions/`` group.
        """
        dim = int(self.manifest["regions"]["dim"])
        for f, entry, lo in zip(self._files, self.manifest["shards"], self._offsets[:-1]):
            if "regions" not in f:
                raise IndexCorrupt(f"{entry['file']}: the index stores regions but this shard has none")
            group = f["regions"]
            yield ShardRegions(group["row"][...].astype(np.int64) + int(lo), group["boxes"][...].astype(np.int32),
                               group["descriptors"][...].astype(np.float32).reshape(-1, dim))

    def region_count(self) -> int:
        """Regions in all shards (tombstoned items' included)."""
        return int(sum(f["regions"]["row"].shape[0] for f in self._files if "regions" in f))

    def _spans(self, lo: int, hi: int):
        """(shard, first local row, end local row, first output row) of each shard's part of rows
        ``lo``..``hi`` (exclusive)."""
        first = int(np.searchsorted(self._offsets, lo, side="right") - 1)
        for s in range(max(first, 0), len(self._files)):
            a, b = int(self._offsets[s]), int(self._offsets[s + 1])
            if a >= hi:
                break
            x, y = max(a, lo), min(b, hi)
            if y > x:
                yield s, x - a, y - a, x - lo

    def fill_rows(self, out: np.ndarray, lo: int, hi: int) -> None:
        """Write the float32 embeddings of rows ``lo``..``hi`` (exclusive) into ``out`` (shape
        ``(hi - lo, dim)``), read straight from the shards."""
        for s, a, b, at in self._spans(lo, hi):
            self._decoders[s].read_into(self._files[s]["embeddings"], out[at:at + b - a], a, b)

    def codebook(self):
        """The one :class:`~.transform_codec.TransformCodec` every shard is coded with, None when
        a shard is stored otherwise (float, scalar-quantised, another codebook) or there is none."""
        books = {d.space: d.transform for d in self._decoders}
        if len(books) != 1:
            return None
        return next(iter(books.values()))

    def fill_coefficients(self, out: np.ndarray, lo: int, hi: int) -> None:
        """Write rows ``lo``..``hi`` (exclusive) as coefficients of the index's one codebook
        (:meth:`codebook`; shape ``(hi - lo, K)``) into ``out``: their inner products with a
        query ``q`` are ``q · x̂ − q · μ`` with ``R q`` in place of ``q``, so an exact search over
        them ranks the rows as one over the decoded rows does, at a fraction of the cost."""
        if self.codebook() is None:
            raise ValueError("the index's shards are not all coded with one codebook")
        for s, a, b, at in self._spans(lo, hi):
            self._decoders[s].read_coefficients_into(self._files[s]["embeddings"], out[at:at + b - a], a, b)

    def _fill(self, out: np.ndarray) -> None:
        for f, decoder, lo, hi in zip(self._files, self._decoders, self._offsets[:-1], self._offsets[1:]):
            if hi > lo:
                decoder.read_into(f["embeddings"], out[lo:hi], 0, int(hi - lo))

    def _build_faiss(self, device) -> None:
        m = self.manifest
        if not getattr(self, "_build_index", True):
            self.faiss_index, self.exact = None, not (m.get("trained") and not faiss_index.is_flat(self.index_spec))
            return
        trained = None
        shard_files: list[Path] = []
        if m.get("trained") and not faiss_index.is_flat(self.index_spec):
            trained = faiss.read_index(str(self.index_dir / m["trained"]["file"]))
            for entry in m["shards"]:
                if not entry.get("faiss"):
                    raise IndexCorrupt(f"{entry['file']}: no FAISS file committed for spec {self.index_spec}")
                shard_files.append(self.index_dir / entry["faiss"]["file"])
        faiss_gpu = bool(getattr(device, "faiss_gpu", False))
        record = faiss_index.covered_lists(m) if trained is not None else None
        lists = (self.index_dir / record["file"], int(record["shards"])) if record else None
        self.lists_used = record is not None  # inverted lists mapped from the persisted file
        self.faiss_index, self.exact = faiss_index.combine(trained, shard_files, self._fill, len(self.ids), self.dim, faiss_gpu, lists)
        if trained is not None and faiss_index.reranks_from_shards(self.index_spec):
            # the base's candidates re-ranked with the shards' own embeddings, memory-mapped
            self.faiss_index = RerankFromRows(self.faiss_index, self.stored_rows, float(self.search_params.get("k_factor") or 1.0),
                                              scores_of=self.stored_scores)
        if self.faiss_index.ntotal != len(self.ids):
            raise IndexCorrupt(f"FAISS files hold {self.faiss_index.ntotal} vectors for {len(self.ids)} committed items")
        if not self.exact:
            faiss_index.apply_search_params(self.faiss_index, self.search_params)
        # The CPU index stays; a GPU copy (when FAISS can move this type) serves what it can.
        self.gpu_index, self.gpu_path = None, "cpu: no GPU"
        if isinstance(self.faiss_index, RerankFromRows):
            self.gpu_path = "cpu: the re-rank reads the shards"
        elif faiss_gpu:  # pragma: no cover - no GPU on the test machines (scripts/gpu_check.py)
            self.gpu_index, self.gpu_path = faiss_index.gpu_copy(self.faiss_index)
            if self.gpu_index is not None:
                faiss_index.apply_gpu_params(self.gpu_index, self.search_params)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_live(self) -> int:
        return int(self.live_mask.sum())

    def rows(self, ids: np.ndarray, strict: bool = True) -> np.ndarray:
        """Positions of ``ids`` in :attr:`ids`.

        Raises:
            ConfigError: an id is not in the index (``strict``).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._dense:
            rows = ids
            ok = (rows >= 0) & (rows < len(self.ids))
        else:
            rows = np.searchsorted(self.ids, ids)
            rows = np.clip(rows, 0, max(len(self.ids) - 1, 0))
            ok = self.ids[rows] == ids if len(self.ids) else np.zeros(len(ids), dtype=bool)
        if not ok.all():
            if strict:
                raise ConfigError(f"id {int(ids[~ok][0])} is not in the index")
            return rows[ok]
        return rows

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """float32 (n, D) embeddings of ``ids``, read from the shards."""
        rows = self.rows(ids)
        self.ensure_checked(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            local = rows[where] - self._offsets[s]
            order = np.argsort(local, kind="stable")
            uniq, inverse = np.unique(local[order], return_inverse=True)
            block = self._decoders[s].read(self._files[s]["embeddings"], uniq)  # h5py wants increasing indices
            out[where[order]] = block[inverse]
        return out

    def prepare_reads(self) -> None:
        """Map every shard's stored embeddings now (the first re-rank of a query does otherwise)."""
        self._mapped()

    def _mapped(self) -> list:
        """Each shard's stored ``embeddings`` as a read-only numpy memory map of the file (the
        dataset is contiguous: no chunks, no filter), or its h5py dataset where HDF5 gives no
        offset (an empty shard)."""
        if self._maps is None:
            maps = []
            for f in self._files:
                ds = f["embeddings"]
                offset = ds.id.get_offset() if ds.shape[0] else None
                if offset is None or ds.chunks is not None or ds.compression is not None:
                    maps.append(ds)
                else:
                    mapped = np.memmap(f.filename, dtype=ds.dtype, mode="r", offset=int(offset), shape=ds.shape)
                    # the re-rank reads scattered rows: no read-ahead around each (it would fill the
                    # page cache with neighbouring rows no query asked for)
                    if hasattr(mapped, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
                        mapped._mmap.madvise(mmap.MADV_RANDOM)
                    maps.append(mapped)
            self._maps = maps
        return self._maps

    def _stored_blocks(self, sorted_rows: np.ndarray):
        """(first position, end position, shard, its stored rows) for each shard's run of the
        ascending ``sorted_rows``, gathered from the memory-mapped shards (as stored: not decoded)."""
        maps = self._mapped()
        shard = np.searchsorted(self._offsets, sorted_rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(sorted_rows)]])):
            s = int(shard[lo])
            local = sorted_rows[lo:hi] - self._offsets[s]
            source = maps[s]
            if isinstance(source, np.ndarray):
                block = source[local]
            else:  # an h5py dataset (a shard HDF5 gives no offset for) reads increasing positions
                uniq, inverse = np.unique(local, return_inverse=True)
                block = source[uniq][inverse]
            yield int(lo), int(hi), s, block

    def stored_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 (n, D) stored embeddings of sorted unique ``rows``, gathered from the memory-mapped
        shards and decoded (float16, or each shard's scalar quantiser): what the re-rank from the
        shards reads for each query's candidates."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return out
        for lo, hi, s, block in self._stored_blocks(rows):
            out[lo:hi] = self._decoders[s].decode(block)
        return out

    def stored_scores(self, queries: np.ndarray, which: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float32 inner products of ``queries[which[i]]`` with the stored embedding of ``rows[i]``
        (pairs, in any order), read from the memory-mapped shards: what the re-rank from the shards
        ranks each query's candidates by. Float and scalar-quantised rows are decoded by their
        shard's :class:`~.shard.Decoder`; transform-coded rows are scored in their codebook's
        rotated space, the queries rotated once per codebook and the rows of every shard coded
        with it scored together (each with its shard's range)."""
        rows = np.asarray(rows, dtype=np.int64)
        which = np.asarray(which, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.float32)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        coded: dict[str, list] = {}  # codebook space → [(positions, row codes, decoder)]
        prepared: dict[str, object] = {}
        for lo, hi, s, block in self._stored_blocks(rows[order]):
            decoder = self._decoders[s]
            positions = order[lo:hi]
            if decoder.transform is not None:
                coded.setdefault(decoder.space, []).append((positions, block, decoder))
                continue
            if decoder.space not in prepared:
                prepared[decoder.space] = decoder.prepare(queries)
            out[positions] = decoder.scores(block, prepared[decoder.space], which[positions])
        for parts in coded.values():
            book = parts[0][2].transform
            positions = np.concatenate([p for p, _, _ in parts])
            out[positions] = book.scores_parts(np.concatenate([b for _, b, _ in parts]), [(len(p), d.value_range) for p, _, d in parts],
                                               book.prepare(queries), which[positions])
        return out

    def ensure_checked(self, rows) -> None:
        """Return once the shards holding ``rows`` have matched their checksums (immediately
        unless this open deferred them: :mod:`~medcbir.indexer.deferred_checks`).

        Raises:
            IndexCorrupt: one of the index's shard files is damaged (named).
        """
        if self.checks is None:
            return
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        rows = rows[(rows >= 0) & (rows < len(self.ids))]
        self.checks.ensure(np.unique(np.searchsorted(self._offsets, rows, side="right") - 1).tolist())

    def meta(self, ids: np.ndarray) -> list[dict]:
        """Metadata dicts (ItemMeta fields + ``id``) of a few ids (for results, not bulk work)."""
        rows = self.rows(ids)
        self.ensure_checked(rows)
        out = [{"id": int(self.ids[r]), **meta} for r, meta in zip(rows.tolist(), self.columns.rows(rows))]
        for meta in out:
            if "source" in meta:
                meta["source"] = self.source_path(str(meta["source"]))
        return out

    def set_search_params(self, **kw) -> None:
        """Change search defaults (``nprobe``, ``k_factor``, ``efSearch``) on this store's index."""
        self.search_params.update({k: v for k, v in kw.items() if v is not None})
        if not self.exact:
            faiss_index.apply_search_params(self.faiss_index, self.search_params)

    def search_parameters(self, sel: faiss.IDSelector | None = None, **overrides) -> faiss.SearchParameters:
        """A ``faiss.SearchParameters`` for :attr:`faiss_index` with the current defaults, the
        overrides and an optional id selector placed where FAISS applies it (e.g. inside the
        base parameters under a refine step)."""
        params = {**self.search_params, **{k: v for k, v in overrides.items() if v is not None}}
        return faiss_index.search_parameters(self.faiss_index, params, sel)

    def key(self) -> bytes | None:
        """The archive's pseudonym key (``pseudonym.key`` or the manifest's ``key_file``), or None."""
        return read_key(self.index_dir, self.manifest)

    def source_path(self, recorded: str) -> str:
        """Where an item's file is: a sealed folder record opened with the archive key (an
        absolute path), any other record (a URI, an older index's path) as it is."""
        if not is_sealed(recorded):
            return recorded
        seal = self.seal()
        return recorded if seal is None else seal.open(recorded)

    def seal(self):
        """The :class:`~medcbir.imaging.source_seal.SourceSeal` of this index's folder sources
        (None without a recorded archive root or without the key, or when they do not match)."""
        if not hasattr(self, "_seal"):
            self._seal = seal_of(self.index_dir, self.manifest)
        return self._seal

    def close(self) -> None:
        if self.checks is not None:
            self.checks.close()
        for f in self._files:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._files = []
        self._decoders = []
        self._maps = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
