"""Metadata columns of an open index for search: rows read from the shards, compact codes in RAM.

An index of millions of items cannot hold its string columns in RAM for search (three UIDs and a
path per item, each decoded to numpy unicode at 4 bytes a character). :class:`ShardColumns`
holds none of them:

- **rows** (:meth:`~ShardColumns.rows`, :meth:`~ShardColumns.take`): the values of a few rows are
  read from their shards when asked, grouped per shard (a positioned read per row of a
  contiguous dataset, one read of the span when the rows are dense): e.g. the metadata of a
  search's results.
- **codes** (:meth:`~ShardColumns.codes`), built shard by shard on the first use of a column:

  - the high-cardinality identifiers (patient pseudonym, study and series UIDs, any other
    string column not named below) as a 64-bit hash per row (:func:`hash_strings`: the
    fixed-width bytes hashed 8 at a time, vectorised), with the hashes shared by different
    values (*ambiguous*) found exactly while building;
  - the SOP Instance UID as one sorted array of keys (hash prefix, row): a UID's rows without a scan;
  - low-cardinality strings (modality, body part, transfer syntax) as dictionary codes
    (uint8/16/32) over their sorted vocabulary;
  - numbers as the column itself (its stored dtype).

- **masks and groups** on the codes (:meth:`~ShardColumns.isin`, :meth:`~ShardColumns.equal`,
  :meth:`~ShardColumns.find`, :meth:`~ShardColumns.groups`). A hash only proposes candidate
  rows: they are confirmed against the stored values (one row per unambiguous hash, every row
  of an ambiguous one), so a collision never excludes, returns or merges a wrong item.
- **whole columns** for bulk work (evaluation, reproduction): ``columns[name]`` reads the
  column from every shard (strings decoded to ``<U``, as the engine always gave them) and keeps
  nothing.

:meth:`~ShardColumns.held` reports the bytes the codes hold.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping

import h5py
import numpy as np

from medcbir.indexer.shard import decode_strings

#: The column looked up by value (a query's SOP Instance UID): a sorted hash index.
INDEXED = ("sop_instance_uid",)
#: Low-cardinality strings: dictionary codes. Every other string column is hashed.
DICTIONARY = ("modality", "body_part", "transfer_syntax")

_SEED = np.uint64(0x9E3779B97F4A7C15)
_K1 = np.uint64(0x87C37B91114253D5)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_HASH_BLOCK = 65_536  # rows hashed at a time (bounds the temporary byte matrix)
_SPAN_READ = 4  # read a shard's whole span of the asked rows when it is at most this many times their count


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (maps 0 to 0), in place."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def as_bytes(values) -> np.ndarray:
    """String values (``S``, ``U``, objects, or a list of str) as a fixed-width UTF-8 ``S`` array."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return values
    if values.dtype.kind == "U":
        return np.char.encode(values, "utf-8") if values.size else values.astype("S1")
    encoded = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.reshape(-1).tolist()]
    return np.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}")


def hash_strings(values) -> np.ndarray:
    """A 64-bit hash (uint64) of each string of ``values`` (bytes as stored; str as UTF-8).

    Trailing NUL bytes do not count (numpy drops them too), so the width of the array does not
    change a value's hash: a shard whose column is 40 bytes wide and one 60 bytes wide hash the
    same UID alike. Vectorised: 8 bytes of every row per step, no Python loop per row.
    """
    values = as_bytes(values).reshape(-1)
    out = np.empty(len(values), dtype=np.uint64)
    for lo in range(0, len(values), _HASH_BLOCK):
        out[lo:lo + _HASH_BLOCK] = _hash_block(values[lo:lo + _HASH_BLOCK])
    return out


def _hash_block(values: np.ndarray) -> np.ndarray:
    """Each value's 8-byte words (NUL-padded) mixed apart (word j times its own odd constant,
    then MurmurHash3's finaliser) and summed, then finalised: a NUL word adds 0, so padding
    never counts."""
    n, width = len(values), values.dtype.itemsize
    h = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return h
    words = -(-width // 8)
    raw = np.zeros((n, words * 8), dtype=np.uint8)
    raw[:, :width] = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    columns = np.ascontiguousarray(raw.view("<u8").T)  # words × n
    tmp = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words):
            w = columns[j]
            w *= _K1 + np.uint64(2 * j)
            for m in (_M1, _M2, None):  # MurmurHash3's fmix64, in place
                np.right_shift(w, _S33, out=tmp)
                w ^= tmp
                if m is not None:
                    w *= m
            h += w
        h ^= _SEED
        return _fmix(h)


# ---------------------------------------------------------------------------------------- codes
class HashCodes:
    """One 64-bit hash per row, and the hashes that more than one value shares (sorted)."""

    kind = "hash"

    def __init__(self, hashes: np.ndarray, ambiguous: np.ndarray) -> None:
        self.hashes = hashes
        self.ambiguous = ambiguous

    @property
    def nbytes(self) -> int:
        return int(self.hashes.nbytes + self.ambiguous.nbytes)


class HashIndex:
    """Every row as one sorted uint64 key: the high bits of its value's hash, then the row in the
    low ``row_bits`` bits. One sort of plain integers (no argsort, no separate row array: 8 bytes
    a row); a value's rows are the keys between its hash prefix with the row bits all 0 and all 1
    (a hash prefix shared by other values only proposes rows, confirmed against the stored ones)."""

    kind = "index"

    def __init__(self, keys: np.ndarray, row_bits: int) -> None:
        self.keys = keys
        self.row_bits = int(row_bits)

    @staticmethod
    def bits_for(n: int) -> int:
        return max(1, int(n - 1).bit_length()) if n > 1 else 1

    @classmethod
    def of(cls, hashes: np.ndarray) -> "HashIndex":
        """The index of ``hashes`` (uint64, one per row; consumed: sorted in place as keys)."""
        bits = cls.bits_for(len(hashes))
        keys = hashes
        keys >>= np.uint64(bits)
        keys <<= np.uint64(bits)
        keys |= np.arange(len(hashes), dtype=np.uint64)
        keys.sort()
        return cls(keys, bits)

    def candidates(self, hashes: np.ndarray) -> list[np.ndarray]:
        """For each hash, the rows (int64, ascending) whose value's hash shares its prefix."""
        bits = np.uint64(self.row_bits)
        low = (np.asarray(hashes, dtype=np.uint64) >> bits) << bits
        high = low | np.uint64((1 << self.row_bits) - 1)
        lo = np.searchsorted(self.keys, low, side="left")
        hi = np.searchsorted(self.keys, high, side="right")
        mask = np.uint64((1 << self.row_bits) - 1)
        return [(self.keys[a:b] & mask).astype(np.int64) for a, b in zip(lo.tolist(), hi.tolist())]

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes)


class DictionaryCodes:
    """A code per row into ``vocabulary`` (the column's distinct values, sorted bytes)."""

    kind = "dictionary"

    def __init__(self, codes: np.ndarray, vocabulary: np.ndarray) -> None:
        self.codes = codes
        self.vocabulary = vocabulary

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.vocabulary.nbytes)


class NumericCodes:
    """A numeric column held as stored (its own dtype)."""

    kind = "numeric"

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


def _codes_mask(codes: np.ndarray, wanted) -> np.ndarray:
    """Row mask: ``codes[row]`` is one of ``wanted`` (a few codes: one comparison each)."""
    wanted = np.asarray(wanted).reshape(-1)
    if len(wanted) > 8:
        return np.isin(codes, wanted)
    out = np.zeros(len(codes), dtype=bool)
    for code in wanted.astype(codes.dtype):  # numpy scalars of the codes' dtype: no float conversion
        out |= codes == code
    return out


class ShardColumns(Mapping):
    """The metadata columns of an index's shards (see the module docstring).

    A ``Mapping`` of column name → the whole column (read on each access, kept by nobody:
    for bulk consumers); search uses the row, code, mask and group methods.

    Args:
        files: the open shard files, in shard order.
        offsets: the first row of each shard, then the number of rows (``len(files) + 1``).
        names: the column names (``ItemMeta.COLUMNS`` order).
    """

    def __init__(self, files: list[h5py.File], offsets, names: list[str]) -> None:
        self._files = files
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._names = list(names)
        self._codes: dict[str, object] = {}
        self._raw: dict[tuple[int, str], tuple | None] = {}
        self._widths: dict[str, int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Mapping: whole columns
    def __getitem__(self, name: str) -> np.ndarray:
        return self.column(name)

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"ShardColumns({self.n} rows, {len(self._files)} shards, codes of {sorted(self._codes)})"

    @property
    def n(self) -> int:
        """Rows in all shards."""
        return int(self._offsets[-1]) if len(self._offsets) else 0

    def column(self, name: str) -> np.ndarray:
        """The whole column over every shard (strings decoded to ``<U``), read now and not kept."""
        self._check(name)
        parts = [f["meta"][name][...] for f in self._files]
        if not parts:
            return np.array([], dtype="U1")
        if parts[0].dtype.kind == "S":
            width = max(p.dtype.itemsize for p in parts)
            parts = [p.astype(f"S{width}") for p in parts]
        return decode(np.concatenate(parts))

    def _check(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)

    def prepare(self) -> None:
        """Read every shard's string widths now (the first :meth:`rows` of a query reads them from
        each shard's header otherwise, once per column for every shard)."""
        for name in self._names:
            self._width(name)

    def _width(self, name: str) -> int:
        """The widest shard's bytes per value of a string column (0 for other columns)."""
        if name not in self._widths:
            dtypes = [f["meta"][name].dtype for f in self._files]
            self._widths[name] = max((d.itemsize for d in dtypes), default=1) if dtypes and dtypes[0].kind == "S" else 0
        return self._widths[name]

    # ------------------------------------------------------------------ rows
    def _raw_of(self, s: int, name: str):
        """(fd, file offset, bytes per row, dtype, row shape) of a contiguous, unfiltered dataset
        whose rows can be read with ``os.pread``; None otherwise (h5py reads it)."""
        key = (s, name)
        if key not in self._raw:
            info = None
            ds = self._files[s]["meta"][name]
            try:
                plain = ds.chunks is None and ds.compression is None and ds.dtype.kind in "biufS" and ds.shape[0] > 0
                if plain and ds.dtype.kind == "S":
                    plain = ds.id.get_type().get_strpad() == h5py.h5t.STR_NULLPAD
                offset = ds.id.get_offset() if plain else None
                if offset is not None:
                    per_row = int(ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
                    info = (self._files[s].id.get_vfd_handle(), int(offset), per_row, ds.dtype, tuple(ds.shape[1:]))
            except (AttributeError, ValueError, RuntimeError, OSError):  # another HDF5 driver: read through h5py
                info = None
            self._raw[key] = info
        return self._raw[key]

    def _read(self, s: int, name: str, local: np.ndarray) -> np.ndarray:
        """Stored values of sorted unique rows ``local`` (not empty) of shard ``s``."""
        lo, hi = int(local[0]), int(local[-1]) + 1
        dense = hi - lo <= _SPAN_READ * len(local) + 64
        raw = self._raw[(s, name)] if (s, name) in self._raw else self._raw_of(s, name)
        if raw is None:
            ds = self._files[s]["meta"][name]
            return ds[lo:hi][local - lo] if dense else ds[local]  # h5py: increasing indices
        fd, offset, per_row, dtype, shape = raw
        if dense:  # one read of the span
            block = np.frombuffer(_pread(fd, (hi - lo) * per_row, offset + lo * per_row), dtype=dtype).reshape((hi - lo, *shape))
            return block[local - lo]
        data = b"".join(_pread(fd, per_row, offset + r * per_row) for r in local.tolist())
        return np.frombuffer(data, dtype=dtype).reshape((len(local), *shape))

    def _plan(self, rows) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """(inverse, [(shard, its sorted unique local rows)]) of ``rows``: how to read them."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n):
            raise IndexError(f"rows outside the index's {self.n} items")
        uniq, inverse = np.unique(rows, return_inverse=True)
        bounds = np.searchsorted(uniq, self._offsets)
        reads = [(s, uniq[bounds[s]:bounds[s + 1]] - self._offsets[s]) for s in np.flatnonzero(np.diff(bounds)).tolist()]
        return inverse.reshape(-1), reads

    def take_stored(self, name: str, rows, plan=None) -> np.ndarray:
        """Values of ``rows`` (any order, repeats allowed) as stored: strings as bytes (``S`` of
        the widest shard), numbers in their dtype. Read from the shards, grouped per shard."""
        self._check(name)
        if not self._files:
            if len(np.asarray(rows).reshape(-1)):
                raise IndexError("rows of an index without items")
            return np.array([], dtype="S1")
        inverse, reads = plan if plan is not None else self._plan(rows)
        width = self._width(name)
        parts = []
        for s, local in reads:
            block = self._read(s, name, local)
            parts.append(block.astype(f"S{width}") if width and block.dtype.itemsize != width else block)
        if not parts:
            ds = self._files[0]["meta"][name]
            return np.empty((0, *ds.shape[1:]), dtype=f"S{width}" if width else ds.dtype)
        values = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return values[inverse]

    def take(self, name: str, rows, plan=None) -> np.ndarray:
        """Values of ``rows`` with the whole column's dtype (strings as ``<U``): ``column(name)[rows]``
        without reading the column."""
        values = self.take_stored(name, rows, plan)
        if not self._files:
            return np.array([], dtype="U1")
        return decode(values)

    def rows(self, rows) -> list[dict]:
        """The metadata of ``rows`` as ``{column: plain value}`` dicts (str, int, float, tuples
        for pairs), the columns of each row's shard read together."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return []
        values = []
        plan = self._plan(rows) if self._files else None
        for name in self._names:
            col = self.take(name, rows, plan)
            listed = col.tolist()
            values.append([tuple(v) for v in listed] if col.ndim > 1 else listed)
        return [dict(zip(self._names, row)) for row in zip(*values)] if values else [{} for _ in range(len(rows))]

    # ------------------------------------------------------------------ codes
    def kind(self, name: str) -> str:
        """How :meth:`codes` holds a column: ``index``, ``hash``, ``dictionary`` or ``numeric``."""
        self._check(name)
        if not self._files:
            return "numeric"
        dtype = self._files[0]["meta"][name].dtype
        if dtype.kind not in "SUO":
            return "numeric"
        return "index" if name in INDEXED else "dictionary" if name in DICTIONARY else "hash"

    def codes(self, name: str):
        """The column's codes (built on first use, then held): a :class:`HashCodes`,
        :class:`HashIndex`, :class:`DictionaryCodes` or :class:`NumericCodes`."""
        self._check(name)
        with self._lock:
            if name not in self._codes:
                kind = self.kind(name)
                build = {"index": self._build_index, "hash": self._build_hash, "dictionary": self._build_dictionary}.get(kind)
                self._codes[name] = build(name) if build is not None else NumericCodes(self._numeric(name))
            return self._codes[name]

    def held(self) -> dict[str, int]:
        """Bytes held per column whose codes were built."""
        with self._lock:
            return {name: codes.nbytes for name, codes in self._codes.items()}

    def held_bytes(self) -> int:
        """All bytes the codes hold (nothing else is kept: rows and whole columns are read)."""
        return int(sum(self.held().values()))

    def _parts(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, stored values) of each shard, one shard in memory at a time."""
        for s, f in enumerate(self._files):
            yield int(self._offsets[s]), f["meta"][name][...]

    def _numeric(self, name: str) -> np.ndarray:
        parts = [p for _, p in self._parts(name)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _build_hash(self, name: str) -> HashCodes:
        hashes = np.empty(self.n, dtype=np.uint64)
        first_hashes, first_rows, ambiguous = [], [], []
        for lo, part in self._parts(name):
            part = as_bytes(part)
            h = hash_strings(part)
            hashes[lo:lo + len(h)] = h
            uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
            differs = part != part[first][inverse.reshape(-1)]  # a row unlike the first of its hash in this shard
            if differs.any():
                ambiguous.append(h[differs])
            first_hashes.append(uniq)
            first_rows.append(first.astype(np.int64) + lo)
        if first_hashes:
            # a hash seen in several shards: compare the values of its first row in each
            hs, rs = np.concatenate(first_hashes), np.concatenate(first_rows)
            order = np.argsort(hs, kind="stable")
            hs, rs = hs[order], rs[order]
            again = np.flatnonzero(hs[1:] == hs[:-1]) + 1
            if len(again):
                starts = np.flatnonzero(np.concatenate([[True], hs[1:] != hs[:-1]]))
                head = starts[np.searchsorted(starts, again, side="right") - 1]
                values = self.take_stored(name, np.concatenate([rs[again], rs[head]]))
                differs = values[:len(again)] != values[len(again):]
                ambiguous.append(hs[again][differs])
        ambiguous_hashes = np.unique(np.concatenate(ambiguous)) if ambiguous else np.zeros(0, dtype=np.uint64)
        return HashCodes(hashes, ambiguous_hashes.astype(np.uint64))

    def _build_index(self, name: str) -> HashIndex:
        hashes = np.empty(self.n, dtype=np.uint64)
        for lo, part in self._parts(name):
            hashes[lo:lo + len(part)] = hash_strings(part)
        return HashIndex.of(hashes)

    def _build_dictionary(self, name: str) -> DictionaryCodes:
        local = []
        for lo, part in self._parts(name):
            uniq, inverse = np.unique(as_bytes(part), return_inverse=True)
            local.append((lo, uniq, inverse.reshape(-1).astype(np.uint32)))
        width = max([1, *(u.dtype.itemsize for _, u, _ in local)])
        vocabulary = np.unique(np.concatenate([u.astype(f"S{width}") for _, u, _ in local])) if local else np.zeros(0, dtype="S1")
        dtype = np.uint8 if len(vocabulary) <= 2**8 else np.uint16 if len(vocabulary) <= 2**16 else np.uint32
        codes = np.empty(self.n, dtype=dtype)
        for lo, uniq, inverse in local:
            codes[lo:lo + len(inverse)] = np.searchsorted(vocabulary, uniq.astype(f"S{width}")).astype(dtype)[inverse]
        return DictionaryCodes(codes, vocabulary)

    # ------------------------------------------------------------------ masks
    def _confirmed(self, name: str, rows: np.ndarray, row_hashes: np.ndarray, ambiguous: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """The candidate ``rows`` (proposed by their hashes) whose stored value is one of
        ``wanted`` (bytes): one row read per unambiguous hash, every row of an ambiguous one."""
        keep = np.zeros(len(rows), dtype=bool)
        if not len(rows):
            return rows
        amb = np.isin(row_hashes, ambiguous) if len(ambiguous) else np.zeros(len(rows), dtype=bool)
        plain = ~amb
        if plain.any():
            _, first, inverse = np.unique(row_hashes[plain], return_index=True, return_inverse=True)
            ok = np.isin(self.take_stored(name, rows[plain][first]), wanted)
            keep[plain] = ok[inverse.reshape(-1)]
        if amb.any():
            keep[amb] = np.isin(self.take_stored(name, rows[amb]), wanted)
        return rows[keep]

    def isin(self, name: str, values, upper: bool = False) -> np.ndarray:
        """Row mask (bool, one per row): the row's value is one of ``values`` (str); ``upper``:
        compare the value upper-cased (``values`` given upper-cased)."""
        values = [values] if isinstance(values, (str, bytes)) else list(values)
        mask = np.zeros(self.n, dtype=bool)
        if not values or not self._files:
            return mask
        codes = self.codes(name)
        if codes.kind == "numeric":
            return np.isin(codes.values, np.asarray(values).astype(codes.values.dtype)) if codes.values.ndim == 1 else mask
        if codes.kind == "dictionary":
            vocabulary = decode_strings(codes.vocabulary)
            if upper:
                vocabulary = np.char.upper(vocabulary)
            return _codes_mask(codes.codes, np.flatnonzero(np.isin(vocabulary, np.array([_text(v) for v in values], dtype=str))))
        if upper:
            return self._scan_isin(name, values, upper)
        wanted = as_bytes([_text(v) for v in values])
        if codes.kind == "index":
            mask[np.concatenate(self.find(name, values))] = True
            return mask
        candidates = np.flatnonzero(_codes_mask(codes.hashes, hash_strings(wanted)))
        mask[self._confirmed(name, candidates, codes.hashes[candidates], codes.ambiguous, wanted)] = True
        return mask

    def _scan_isin(self, name: str, values, upper: bool) -> np.ndarray:
        """:meth:`isin` read shard by shard (no codes): for comparisons the codes cannot make."""
        wanted = np.array([_text(v) for v in values], dtype=str)
        mask = np.zeros(self.n, dtype=bool)
        for lo, part in self._parts(name):
            text = decode_strings(as_bytes(part))
            mask[lo:lo + len(part)] = np.isin(np.char.upper(text) if upper else text, wanted)
        return mask

    def equal(self, name: str, value) -> np.ndarray:
        """Row mask: the row's value equals ``value``."""
        return self.isin(name, [value])

    def find(self, name: str, values) -> list[np.ndarray]:
        """For each of ``values`` (str), the rows holding exactly it (int64, ascending)."""
        values = list(values)
        if not values or not self._files:
            return [np.zeros(0, dtype=np.int64) for _ in values]
        codes = self.codes(name)
        if codes.kind != "index":
            return [np.flatnonzero(self.isin(name, [v])) for v in values]
        wanted = as_bytes([_text(v) for v in values])
        candidates = codes.candidates(hash_strings(wanted))
        stored = self.take_stored(name, np.concatenate(candidates))
        out, start = [], 0
        for value, rows in zip(wanted.tolist(), candidates):
            out.append(rows[stored[start:start + len(rows)] == value])
            start += len(rows)
        return out

    def row_codes(self, name: str) -> np.ndarray:
        """An int64 code for every row, equal exactly when the values are (the hashes themselves
        when no hash is ambiguous: no sort); a new array, not held."""
        codes = self.codes(name)
        if codes.kind == "hash" and not len(codes.ambiguous):
            return codes.hashes.view(np.int64).copy()
        if codes.kind == "dictionary":
            return codes.codes.astype(np.int64)
        return self.groups(name, np.arange(self.n, dtype=np.int64))[0]

    def groups(self, name: str, rows, ordered: bool = False) -> tuple[np.ndarray, list | None]:
        """Group codes of ``rows``: equal codes exactly when the values are equal.

        Args:
            name: the column.
            rows: the rows to group (any order, repeats allowed).
            ordered: codes in the order of the values (0 = the smallest), and the values.

        Returns:
            (int64 codes aligned with ``rows``, the value of each code as str when ``ordered``
            else None).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return np.zeros(0, dtype=np.int64), ([] if ordered else None)
        codes = self.codes(name)
        if codes.kind == "dictionary":
            uniq, inverse = np.unique(codes.codes[rows], return_inverse=True)
            return inverse.reshape(-1).astype(np.int64), (decode_strings(codes.vocabulary[uniq]).tolist() if ordered else None)
        if codes.kind == "hash":
            hashes = codes.hashes[rows]
            uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            amb_group = np.isin(uniq, codes.ambiguous) if len(codes.ambiguous) else np.zeros(len(uniq), dtype=bool)
            if not ordered and not amb_group.any():
                return inverse.astype(np.int64), None
            values = np.empty(len(rows), dtype=f"S{max(1, self._width(name))}")
            plain = ~amb_group[inverse]
            if plain.any():
                representative = self.take_stored(name, rows[first[~amb_group]])  # one row per unambiguous hash
                slot = np.full(len(uniq), -1, dtype=np.int64)
                slot[~amb_group] = np.arange(int((~amb_group).sum()))
                values[plain] = representative[slot[inverse[plain]]]
            if (~plain).any():
                values[~plain] = self.take_stored(name, rows[~plain])
        else:
            values = self.take_stored(name, rows)
            if values.ndim > 1:
                values = np.ascontiguousarray(values).view(f"V{values.dtype.itemsize * int(np.prod(values.shape[1:]))}").reshape(-1)
        uniq, inverse = np.unique(values, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64), (decode_strings(uniq).tolist() if ordered else None)


def decode(values: np.ndarray) -> np.ndarray:
    """A fixed-width UTF-8 bytes array as numpy unicode as wide as the bytes (``S{w}`` → ``<U{w}``,
    whatever rows it holds); other dtypes unchanged."""
    out = decode_strings(values)
    return out.astype(f"U{max(1, values.dtype.itemsize)}") if values.dtype.kind == "S" and out.dtype != f"<U{max(1, values.dtype.itemsize)}" else out


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` of the file (positioned reads: threads share the descriptor)."""
    data = os.pread(fd, size, offset)
    while len(data) < size:  # a short read (a signal): read on
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise OSError(f"the shard file ends before byte {offset + size}")
        data += more
    return data


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


__all__ = ["ShardColumns", "hash_strings", "as_bytes", "INDEXED", "DICTIONARY"]
