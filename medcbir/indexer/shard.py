"""Shards: immutable HDF5 files holding a block of embeddings, their ids and metadata columns.

Layout of ``shard-NNNNNN.h5``::

    embeddings          N×D float32 (or float16: the index's ``shard_dtype``), contiguous (no
                        chunking, no compression: can be mmapped); read back as float32. With
                        ``shard_dtype`` ``sq8``/``sq6``: N×C uint8, each row FAISS's scalar-quantised
                        code of the embedding (8 or 6 bits per dimension, C = ⌈6D/8⌉ for 6 bits)
                        With ``tc4``/``tc6``/``tc8``: N×W uint8, each row the bit-packed transform
                        code of the embedding under the index's codebook (:mod:`.transform_codec`:
                        W = ⌈Σ widths / 8⌉, about 4/6/8 bits per dimension)
    embeddings_range    (sq8/sq6) 2×D float32: per-dimension minimum and range of this
                        shard's embeddings (FAISS's ``ScalarQuantizer.trained``), which decode the
                        codes back to float32 on read; (tc4/tc6/tc8) 2×K float32: per axis of the
                        codebook, the lowest level and the step of this shard's quantiser
    ids                 N int64 (dense, increasing: first_id .. last_id)
    meta/<column>       one dataset per ItemMeta column: strings as fixed-width UTF-8 bytes,
                        ints int64, floats float64, pairs (pixel_spacing) N×2 float64
    sources/            optional, one row per source file of the shard whose state was seen
                        before it was decoded: name (the recorded ``meta/source``, UTF-8
                        bytes), size (bytes), mtime_ns; what ``index`` compares to notice a
                        file changed since (:mod:`medcbir.indexer.follow`)
    regions/            optional (an index with regions): one row per region of the shard's
                        items: row (int32, the item's row in this shard), boxes (int32 ×4: x, y,
                        w, h in the item's stored pixel grid), descriptors (float16 ×D); attrs
                        version (the region recipe) and dim
    attrs               format, version, encoder_fingerprint, preprocessing (JSON), dim,
                        metric ("ip"), embeddings_sha256 (of the float32 values read back; of the
                        stored row codes for tc4/tc6/tc8, whose float32 reconstruction is a matrix
                        product whose last bits depend on the BLAS), items, first_id, last_id;
                        ``embeddings_codec`` (sq8/sq6/tc4/tc6/tc8 only); ``codebook`` and
                        ``codebook_sha256`` (tc4/tc6/tc8 only: the file name of the index's codebook
                        in the shard's folder and the sha256 of its bytes)

A shard is written to a temporary name, closed, fsynced and renamed (``fsutil.commit_file``);
once its name is in a committed manifest it is never modified again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import h5py
import numpy as np

from medcbir.indexer import transform_codec
from medcbir.indexer.keys import key_hashes, source_hashes
from medcbir.indexer.fsutil import commit_file, crash_point, tmp_name
from medcbir.indexer.fsutil import sha256_file
from medcbir.indexer.transform_codec import TransformCodec, is_transform

FORMAT = "medcbir-shard"
VERSION = 1
METRIC = "ip"


class ShardRegions(NamedTuple):
    """The ``regions/`` group of a shard (or of several, concatenated with ``rows`` made global)."""

    rows: np.ndarray  # int64 (R,) the item's row (in the shard; or its id, once made global)
    boxes: np.ndarray  # int32 (R, 4) x, y, w, h in the item's stored pixel grid
    descriptors: np.ndarray  # float32 (R, D)

    @classmethod
    def empty(cls, dim: int) -> "ShardRegions":
        return cls(np.zeros(0, np.int64), np.zeros((0, 4), np.int32), np.zeros((0, dim), np.float32))

    def take(self, keep: np.ndarray) -> "ShardRegions":
        return ShardRegions(self.rows[keep], self.boxes[keep], self.descriptors[keep])


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.h5"


#: how a shard may store its embeddings
SHARD_DTYPES = ("float32", "float16", "sq8", "sq6", "tc4", "tc6", "tc8")
#: the scalar-quantised storages: FAISS quantiser type of each
SQ_CODECS = {"sq8": faiss.ScalarQuantizer.QT_8bit, "sq6": faiss.ScalarQuantizer.QT_6bit}
#: bytes per dimension of each storage (the transform codes' average; a codebook file per index on top)
STORAGE_BYTES = {"tc4": 0.5, "tc6": 0.75, "sq6": 0.75, "tc8": 1.0, "sq8": 1.0, "float16": 2.0, "float32": 4.0}
#: shard storages, fewest bytes first (a transform code before a scalar one of the same size)
STORAGE_ORDER = tuple(STORAGE_BYTES)


def sq_quantizer(codec: str, dim: int, value_range: np.ndarray | None = None) -> faiss.ScalarQuantizer:
    """FAISS's scalar quantiser of ``codec`` for ``dim``-d vectors, with ``value_range`` (2×dim:
    per-dimension minimum, then range) as its trained parameters when given."""
    if codec not in SQ_CODECS:
        raise ValueError(f"not a scalar-quantised shard storage: {codec!r}")
    sq = faiss.ScalarQuantizer(int(dim), SQ_CODECS[codec])
    if value_range is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(value_range, dtype=np.float32).ravel(), sq.trained)
    return sq


def sq_encode(embeddings: np.ndarray, codec: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 N×C, range 2×D float32) of ``embeddings`` quantised per dimension over their
    own minimum..maximum (a constant dimension gets a tiny range: decoded to its value)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = x.shape[1]
    if len(x):
        lo, hi = x.min(0), x.max(0)
    else:
        lo, hi = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    value_range = np.stack([lo, np.maximum(hi - lo, np.float32(1e-12))]).astype(np.float32)
    sq = sq_quantizer(codec, dim, value_range)
    codes = sq.compute_codes(x) if len(x) else np.zeros((0, int(sq.code_size)), np.uint8)
    return np.ascontiguousarray(codes, dtype=np.uint8), value_range


class Decoder:
    """Turns a shard's stored ``embeddings`` rows into float32: identity for float32/float16,
    FAISS's scalar-quantiser decode for ``sq8``/``sq6``, the index's codebook for ``tc4``/``tc6``/
    ``tc8`` (one per open shard). Scores queries against stored rows too (:meth:`prepare`,
    :meth:`scores`): a transform-coded row is scored in the codebook's rotated space, not decoded."""

    def __init__(self, codec: str | None, dim: int, value_range: np.ndarray | None = None,
                 transform: TransformCodec | None = None) -> None:
        self.codec, self.dim = codec, int(dim)
        self.sq = sq_quantizer(codec, dim, value_range) if codec in SQ_CODECS else None
        self.transform = transform if is_transform(codec) else None
        if is_transform(codec) and (transform is None or transform.dtype != codec or transform.dim != self.dim):
            raise ValueError(f"a {codec} shard of {dim}-d embeddings needs its {codec} codebook of that dimension")
        self.value_range = self.transform.check_range(value_range) if self.transform is not None else None
        if codec and self.sq is None and self.transform is None:
            raise ValueError(f"unknown embeddings codec {codec!r}")
        self.width = (int(self.sq.code_size) if self.sq is not None else self.transform.code_bytes if self.transform is not None
                      else self.dim)

    @classmethod
    def of(cls, f: h5py.File, dim: int | None = None) -> "Decoder":
        """The decoder of an open shard. A transform-coded shard's codebook is loaded from the
        shard's folder (from the index folder for a shard staged in ``INDEX/.staging-*``).

        Raises:
            IndexCorrupt: the shard's codebook is missing or is not the one it was coded with.
            KeyError, ValueError: the shard's codec attributes are missing or unknown.
        """
        codec = _text(f.attrs.get("embeddings_codec"))
        dim = int(f.attrs["dim"]) if dim is None else int(dim)
        if not codec:
            return cls(None, dim)
        if is_transform(codec):
            path = codebook_path(Path(f.filename), _text(f.attrs["codebook"]))
            book = transform_codec.load(path, _text(f.attrs["codebook_sha256"]), Path(f.filename).name)
            return cls(codec, dim, f["embeddings_range"][...], transform=book)
        return cls(str(codec), dim, f["embeddings_range"][...])

    def stored_shape(self, items: int) -> tuple[int, int]:
        return (int(items), self.width)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        if self.transform is not None:
            return self.transform.decode(stored, self.value_range)
        if self.sq is None:
            return np.asarray(stored).astype(np.float32, copy=False)
        stored = np.ascontiguousarray(stored, dtype=np.uint8)
        if not len(stored):
            return np.zeros((0, self.dim), np.float32)
        return self.sq.decode(stored)

    def checksum(self, stored: np.ndarray) -> str:
        """The shard's ``embeddings_sha256`` of its stored rows: of the decoded float32 values, or
        of the row codes and the range themselves for a transform-coded shard."""
        if self.transform is not None:
            return codes_sha256(stored, self.value_range)
        return embeddings_sha256(self.decode(stored))

    @property
    def space(self) -> str:
        """What :meth:`prepare` depends on: decoders of one space share prepared queries."""
        return f"codebook:{self.transform.sha256}" if self.transform is not None else "direct"

    def prepare(self, queries: np.ndarray):
        """The queries (float32 B×D) as :meth:`scores` takes them (rotated once for a codebook)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.transform.prepare(queries) if self.transform is not None else queries

    def scores(self, stored: np.ndarray, prepared, which: np.ndarray) -> np.ndarray:
        """float32 inner products of stored rows (N) with their queries (``which``: N indices into
        the prepared queries): the scores an exact search over the decoded rows gives."""
        which = np.asarray(which, dtype=np.int64)
        if self.transform is not None:
            return self.transform.scores(stored, self.value_range, prepared, which)
        return np.einsum("ij,ij->i", self.decode(stored), prepared[which], dtype=np.float32)

    def read(self, ds: h5py.Dataset, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """float32 rows of the dataset (all, a slice, or sorted positions)."""
        if self.sq is None and self.transform is None:
            if rows is None:
                out = np.empty(ds.shape, dtype=np.float32)
                if ds.shape[0]:
                    ds.read_direct(out)
                return out
            return ds[rows].astype(np.float32, copy=False)
        return self.decode(ds[...] if rows is None else ds[rows])

    def read_into(self, ds: h5py.Dataset, out: np.ndarray, lo: int, hi: int) -> None:
        """Rows ``lo``..``hi`` of the dataset decoded into ``out`` (``hi - lo`` rows)."""
        if self.sq is None and self.transform is None:
            ds.read_direct(out, source_sel=np.s_[lo:hi], dest_sel=np.s_[0:hi - lo])
            return
        block = transform_codec.BLOCK
        for a in range(lo, hi, block):
            b = min(hi, a + block)
            out[a - lo: b - lo] = self.decode(ds[a:b])

    def read_coefficients_into(self, ds: h5py.Dataset, out: np.ndarray, lo: int, hi: int) -> None:
        """Rows ``lo``..``hi`` of a transform-coded dataset as their codebook's coefficients
        (``hi - lo`` × K float32, :meth:`~.transform_codec.TransformCodec.coefficients_of`) into
        ``out``: what exact inner products need of them, without the decoding matrix product."""
        if self.transform is None:
            raise ValueError("coefficients of a shard that is not transform-coded")
        block = transform_codec.BLOCK
        for a in range(lo, hi, block):
            b = min(hi, a + block)
            self.transform.coefficients_of(ds[a:b], self.value_range, out=out[a - lo: b - lo])


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def codebook_path(shard: Path, name: str) -> Path:
    """Where a shard's codebook ``name`` is: beside it, or in the index folder when the shard is
    staged in ``INDEX/.staging-*`` (compaction, repair)."""
    path = Path(shard).parent / name
    if not path.exists() and Path(shard).parent.name.startswith(".staging-"):
        return Path(shard).parent.parent / name
    return path


def index_codec(index_dir: Path, manifest: dict) -> TransformCodec | None:
    """The codebook new shards of the index are coded with (its ``storage.codebook``), None when
    its storage is not transform-coded or has no codebook yet.

    Raises:
        IndexCorrupt: the codebook file is missing or differs from the committed one.
    """
    record = manifest.get("storage") or {}
    book = record.get("codebook")
    if not is_transform(record.get("dtype")) or not book:
        return None
    return transform_codec.load(Path(index_dir) / book["file"], book["sha256"])


def codebook_entry(record: dict) -> dict:
    """The part of a codebook record a shard's manifest entry keeps (what checks it)."""
    return {k: record[k] for k in ("file", "bytes", "sha256", "xxh3") if k in record}


def shard_dtype(manifest: dict) -> str:
    """How the index ``manifest`` describes stores embeddings in new shards: its decided
    ``storage`` record's dtype, float32 for indexes from before float16 storage or still undecided."""
    record = manifest.get("storage") or {}
    return record.get("dtype") if record.get("dtype") in SHARD_DTYPES else "float32"


def embeddings_sha256(embeddings: np.ndarray) -> str:
    """sha256 of embeddings as float32 (for a scalar-quantised shard: its decoded values)."""
    return hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes()).hexdigest()


def codes_sha256(stored: np.ndarray, value_range: np.ndarray) -> str:
    """sha256 of a transform-coded shard's row codes (uint8) followed by its range (float32): its
    ``embeddings_sha256``."""
    h = hashlib.sha256(np.ascontiguousarray(stored, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(value_range, dtype=np.float32).tobytes())
    return h.hexdigest()


def meta_columns(metas: list[Any]) -> dict[str, np.ndarray]:
    """ItemMeta objects → one numpy array per column (the shard's ``meta/`` group).

    Column names come from ``type(meta).COLUMNS``; the dtype follows the value type.
    """
    if not metas:
        return {}
    names = list(getattr(type(metas[0]), "COLUMNS", ()) or metas[0].to_dict().keys())
    columns: dict[str, np.ndarray] = {}
    for name in names:
        values = [getattr(m, name) for m in metas]
        columns[name] = _column_array(values)
    return columns


def _column_array(values: list[Any]) -> np.ndarray:
    first = values[0]
    if isinstance(first, str):
        encoded = [v.encode("utf-8") for v in values]
        width = max(1, max(len(e) for e in encoded))
        return np.array(encoded, dtype=f"S{width}")
    if isinstance(first, (bool, np.bool_)):
        return np.asarray(values, dtype=bool)
    if isinstance(first, (int, np.integer)):
        return np.asarray(values, dtype=np.int64)
    if isinstance(first, (float, np.floating)):
        return np.asarray(values, dtype=np.float64)
    if isinstance(first, (tuple, list)):
        return np.asarray([[float(x) for x in v] for v in values], dtype=np.float64)
    return _column_array([str(v) for v in values])


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column dicts; byte strings of different widths widen to the largest."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    out = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if arrays[0].dtype.kind == "S":
            width = max(a.dtype.itemsize for a in arrays)
            arrays = [a.astype(f"S{width}") for a in arrays]
        out[name] = np.concatenate(arrays)
    return out


def take_columns(columns: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: col[rows] for name, col in columns.items()}


def write_shard(
    path: Path,
    ids: np.ndarray,
    embeddings: np.ndarray,
    columns: dict[str, np.ndarray],
    encoder_info: dict,
    sources: dict[bytes, tuple[int, int]] | None = None,
    regions: ShardRegions | None = None,
    regions_version: str = "",
    dtype: str = "float32",
    codec: TransformCodec | None = None,
    stored: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[int, str]:
    """Write and commit one shard.

    Args:
        path: the final name (``INDEX/shard-NNNNNN.h5``).
        ids: int64 (N,) item ids.
        embeddings: float32 (N, D), L2-normalised.
        columns: metadata columns aligned with ``ids`` (:func:`meta_columns`).
        encoder_info: the manifest's encoder record (fingerprint, preprocessing, dim).
        sources: recorded source → (size, mtime_ns) of its file, for the ``sources/`` group.
        regions: the ``regions/`` group (``rows`` = row in this shard), None for an index without
            regions; ``regions_version`` names the recipe that made them.
        dtype: ``"float32"``, ``"float16"``, ``"sq8"``, ``"sq6"``, ``"tc4"``, ``"tc6"`` or ``"tc8"``, how
            the embeddings are stored (the attribute ``embeddings_sha256`` is of the stored values,
            read back as float32; of the row codes for ``tc*``).
        codec: the index's codebook (saved: :meth:`~.transform_codec.TransformCodec.save`) for a
            ``tc*`` dtype.
        stored: (row codes, range) of the rows under ``codec`` already (a compaction copying a
            coded shard's rows as they are): written as given, not coded again from ``embeddings``.

    Returns:
        (size in bytes, whole-file sha256) of the committed file.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if dtype not in SHARD_DTYPES:
        raise ValueError(f"shard dtype {dtype!r} is not one of {', '.join(SHARD_DTYPES)}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != ids.shape[0]:
        raise ValueError(f"embeddings {embeddings.shape} do not match {ids.shape[0]} ids")
    value_range = None
    if is_transform(dtype):
        if codec is None or codec.dtype != dtype or codec.dim != embeddings.shape[1] or not codec.file:
            raise ValueError(f"a {dtype} shard needs the index's saved {dtype} codebook of {embeddings.shape[1]}-d embeddings")
        stored, value_range = codec.encode(embeddings) if stored is None else stored
        if stored.shape != (len(ids), codec.code_bytes):
            raise ValueError(f"stored codes {stored.shape} do not match {len(ids)} rows of {codec.code_bytes} bytes")
        value_range = codec.check_range(value_range)
        checksum = codes_sha256(stored, value_range)
    elif dtype in SQ_CODECS:
        stored, value_range = sq_encode(embeddings, dtype)
        checksum = embeddings_sha256(Decoder(dtype, embeddings.shape[1], value_range).decode(stored))
    else:
        stored = embeddings if dtype == "float32" else np.ascontiguousarray(embeddings, dtype=np.float16)
        checksum = embeddings_sha256(stored)
    tmp = tmp_name(path)
    with h5py.File(tmp, "w", libver="latest") as f:
        f.create_dataset("embeddings", data=np.ascontiguousarray(stored))
        if value_range is not None:
            f.create_dataset("embeddings_range", data=value_range)
            f.attrs["embeddings_codec"] = dtype
        if is_transform(dtype):
            f.attrs["embeddings_codec"] = dtype
            f.attrs["codebook"] = codec.file
            f.attrs["codebook_sha256"] = codec.sha256
        f.create_dataset("ids", data=ids)
        meta = f.create_group("meta")
        for name, col in columns.items():
            if col.shape[0] != ids.shape[0]:
                raise ValueError(f"column {name} has {col.shape[0]} rows for {ids.shape[0]} ids")
            meta.create_dataset(name, data=col)
        if "sop_instance_uid" in columns and "frame" in columns:
            # the writer's de-duplication keys, read back at open instead of hashed again
            hashed = f.create_group("key_hashes")
            hashed.create_dataset("item", data=key_hashes(columns["sop_instance_uid"], columns["frame"]))
            if "source" in columns:
                hashed.create_dataset("source", data=source_hashes(columns["source"]))
        if sources:
            group = f.create_group("sources")
            names = sorted(sources)
            group.create_dataset("name", data=np.array(names, dtype=f"S{max(1, max(len(n) for n in names))}"))
            group.create_dataset("size", data=np.array([sources[n][0] for n in names], dtype=np.int64))
            group.create_dataset("mtime_ns", data=np.array([sources[n][1] for n in names], dtype=np.int64))
        if regions is not None:
            _write_regions(f, regions, regions_version, int(ids.shape[0]))
        f.attrs["columns"] = json.dumps(list(columns))  # ItemMeta.COLUMNS order
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["encoder_fingerprint"] = encoder_info["fingerprint"]
        f.attrs["preprocessing"] = json.dumps(encoder_info.get("preprocessing") or {}, sort_keys=True)
        f.attrs["dim"] = int(embeddings.shape[1])
        f.attrs["metric"] = METRIC
        f.attrs["embeddings_sha256"] = checksum
        f.attrs["items"] = int(ids.shape[0])
        f.attrs["first_id"] = int(ids[0]) if len(ids) else -1
        f.attrs["last_id"] = int(ids[-1]) if len(ids) else -1
        f.flush()
    crash_point("shard-write")

    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    commit_file(tmp, path, hook="shard-fsync")
    return size, digest


def _write_regions(f: h5py.File, regions: ShardRegions, version: str, items: int) -> None:
    """The ``regions/`` group of a shard being written (``regions.rows`` = rows in the shard)."""
    rows = np.asarray(regions.rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= items):
        raise ValueError(f"region rows outside the shard's {items} items")
    group = f.create_group("regions")
    group.create_dataset("row", data=rows.astype(np.int32))
    group.create_dataset("boxes", data=np.asarray(regions.boxes, dtype=np.int32).reshape(-1, 4))
    group.create_dataset("descriptors", data=np.asarray(regions.descriptors, dtype=np.float16))
    group.attrs["version"] = version
    group.attrs["dim"] = int(np.shape(regions.descriptors)[1])


def rewrite_regions(source: Path, path: Path, regions: ShardRegions, regions_version: str) -> tuple[int, str]:
    """Write and commit ``path``: a copy of the committed shard ``source`` whose ``regions/``
    group is replaced by ``regions`` (or added, for a shard without one). Everything else (the
    embeddings, ids, metadata, ``sources/``, attributes) is copied as stored, byte for byte:
    HDF5 copies datasets with their layout, so the embeddings stay contiguous and their recorded
    sha256 holds.

    Returns:
        (size in bytes, whole-file sha256) of the committed file.
    """
    tmp = tmp_name(path)
    with h5py.File(source, "r") as src, h5py.File(tmp, "w", libver="latest") as f:
        for name in src:
            if name != "regions":
                src.copy(src[name], f, name=name)
        _write_regions(f, regions, regions_version, int(src["ids"].shape[0]))
        for key, value in src.attrs.items():
            f.attrs[key] = value
        f.flush()
    crash_point("shard-write")
    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    commit_file(tmp, path, hook="shard-fsync")
    return size, digest


def read_ids(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["ids"][...]


def read_embeddings(path: Path, rows: np.ndarray | slice | None = None) -> np.ndarray:
    """float32 embeddings of a shard (all, a slice, or sorted row positions), decoded when the
    shard stores them scalar-quantised."""
    with h5py.File(path, "r") as f:
        return Decoder.of(f).read(f["embeddings"], rows)


def read_coded(path: Path) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(codebook file name, row codes, range) of a transform-coded shard as stored; None for
    another storage."""
    with h5py.File(path, "r") as f:
        if not is_transform(_text(f.attrs.get("embeddings_codec"))):
            return None
        return _text(f.attrs["codebook"]), f["embeddings"][...], f["embeddings_range"][...]


def read_columns(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        group = f["meta"]
        return {name: group[name][...] for name in (names or list(group.keys()))}


def read_regions(path: Path) -> ShardRegions | None:
    """The ``regions/`` group of a shard (descriptors as float32), None when it has none."""
    with h5py.File(path, "r") as f:
        if "regions" not in f:
            return None
        group = f["regions"]
        return ShardRegions(group["row"][...].astype(np.int64), group["boxes"][...].astype(np.int32),
                            group["descriptors"][...].astype(np.float32))


def read_source_stats(path: Path) -> dict[bytes, tuple[int, int]]:
    """The ``sources/`` group of a shard: recorded source → (size, mtime_ns); {} when absent."""
    with h5py.File(path, "r") as f:
        if "sources" not in f:
            return {}
        group = f["sources"]
        return {bytes(n): (int(s), int(m)) for n, s, m in zip(group["name"][...], group["size"][...], group["mtime_ns"][...])}


def read_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        attrs["_shape"] = (int(f["embeddings"].shape[0]), int(f.attrs["dim"])) if "embeddings_codec" in f.attrs else tuple(f["embeddings"].shape)
        attrs["_ids_shape"] = tuple(f["ids"].shape)
        attrs["_columns"] = {k: f["meta"][k].shape[0] for k in f["meta"].keys()}
    return attrs


def decode_strings(col: np.ndarray) -> np.ndarray:
    """A fixed-width UTF-8 bytes column → numpy unicode (``<U``); other dtypes unchanged."""
    if col.dtype.kind != "S":
        return col
    try:
        return col.astype(f"U{max(1, col.dtype.itemsize)}")  # fast path: ASCII (UIDs, codes)
    except UnicodeDecodeError:
        return np.char.decode(col, "utf-8")


def row_meta(columns: dict[str, np.ndarray], row: int) -> dict:
    """One row of the columns as a plain dict (strings decoded, pairs as tuples)."""
    out = {}
    for name, col in columns.items():
        v = col[row]
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, np.ndarray):
            v = tuple(float(x) for x in v)
        elif isinstance(v, np.str_):
            v = str(v)
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.floating):
            v = float(v)
        elif isinstance(v, np.bool_):
            v = bool(v)
        out[name] = v
    return out
