"""Transform coding of shard embeddings: the ``tc4``, ``tc6`` and ``tc8`` shard storages.

Per-dimension scalar quantisation (``sq8``/``sq6``) spends the same bits on every coordinate of an
embedding, although an encoder's embeddings put most of their variance in a few hundred directions.
Transform coding rotates first and spends the bits where the variance is. A **codebook**, fitted
once per index on a sample of its embeddings (:func:`fit`), holds:

- the sample's mean ``μ`` and its principal axes (eigenvectors of the centred covariance, largest
  variance first: the rows of ``R``);
- an integer bit width per axis by reverse water-filling over the axes' variances ``λ_i``:
  ``b_i = round(½·log2 λ_i − t)`` clipped to ``[0, MAX_WIDTH]``, ``t`` the smallest threshold whose
  widths average at most the storage's bits per dimension (4, 6, 8) over all ``D`` dimensions, the
  bits left by rounding given to the axes rounded down the most; axes given 0 bits are dropped
  (decoded at the mean).

Each **shard** quantises its rows' coefficients ``z = R(x − μ)`` on each kept axis uniformly with
``2^b_i`` levels over a range of its own (``lo_i``, ``step_i``: the shard's ``embeddings_range``),
chosen on the shard's coefficients as the quantile pair ``p``/``1 − p`` (``p`` in
:data:`RANGE_QUANTILES`, ``p = 0`` the shard's own minimum and maximum) with the least squared
error — as ``sq8`` takes each shard's own range. A codebook's ranges would be fitted on other rows:
rows beyond them are clipped, and the rows clipped are the ones far out along an axis, the nearest
neighbours of queries pointing that way (docs/indexer.md, "Transform codes").

A row is coded as ``code_i = clip(round((z_i − lo_i) / step_i), 0, 2^b_i − 1)``, the codes of all
kept axes bit-packed big-endian one after the other into ``⌈Σ b_i / 8⌉`` bytes: a fixed width per
row, so a shard's ``embeddings`` dataset is an ``N × W`` uint8 array that the re-rank from the
shards memory-maps as it maps float16 rows. Decoding gives ``x̂ = μ + Rᵀ ẑ``,
``ẑ_i = lo_i + code_i · step_i``.

Scoring without decoding: ``q · x̂ = q · μ + (R q) · ẑ = q · μ + (R q) · lo + Σ_i ((R q)_i step_i) code_i``:
the query is rotated once per codebook (``K × D``, :meth:`TransformCodec.prepare`) and each
candidate costs ``K`` (:meth:`TransformCodec.scores`), where decoding a candidate would cost ``K × D``.

The codebook is an index file, ``codec-<hash>.npz`` (numpy arrays, no pickle; the name is the
start of the sha256 of its bytes), committed by the manifest like every index file; each coded
shard names it and records its sha256 in its attributes, and readers load it from the shard's
folder (:func:`load`, cached per process) and refuse a missing or different one.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from medcbir.errors import IndexCorrupt
from medcbir.indexer.fsutil import commit_file, sha256_file, tmp_name

#: the transform-coded shard storages and their average bits per dimension
CODECS = {"tc4": 4, "tc6": 6, "tc8": 8}
#: the widest code of one axis (bits)
MAX_WIDTH = 16
#: a codebook is fitted on at most this many rows of its sample (a random subset)
FIT_ITEMS = 32_768
#: a shard's quantiser ranges are chosen on at most this many of its rows (a random subset;
#: ``p = 0`` is the extremes of all of them)
RANGE_ROWS = 4_096
#: quantile pairs (p, 1 − p) tried as an axis's range, the shard's minimum..maximum first
RANGE_QUANTILES = (0.0, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.25)
#: rows coded or decoded per block (bounds the temporaries)
BLOCK = 4_096
#: rows unpacked at a time (what keeps a block's gathers in the CPU cache)
UNPACK_ROWS = 256
#: queries rotated without BLAS (:meth:`TransformCodec.prepare`); more go through a matrix product
FEW_QUERIES = 16
#: a shard whose rows a codebook codes with more than this many times the relative squared error
#: it had on its own sample (embeddings unlike those it was fitted on: an archive that drifted since)
#: is stored in float16 instead (:meth:`TransformCodec.drifted`)
DRIFT_RATIO = 4.0
FORMAT = "medcbir-codebook"
VERSION = 1
PREFIX = "codec-"


def is_transform(dtype: str | None) -> bool:
    """True for a transform-coded shard storage (``tc4``, ``tc6``, ``tc8``)."""
    return dtype in CODECS


def min_fit_items(dim: int) -> int:
    """Fewest rows a codebook of ``dim``-d embeddings is fitted on: below twice the dimension the
    sample's smallest principal variances are far below what new rows have (a sample of n rows
    spans at most n − 1 directions), and the codebook would drop or clip what new rows hold there."""
    return 2 * int(dim)


class Principal:
    """The centred principal axes of a sample: what every bit budget's codebook fitted on that
    sample shares (the mean, the axes with their variances)."""

    def __init__(self, sample: np.ndarray, seed: int = 0) -> None:
        x = np.ascontiguousarray(sample, dtype=np.float32)
        n, self.dim = x.shape
        if n > FIT_ITEMS:
            x = x[np.sort(np.random.default_rng(seed).choice(n, FIT_ITEMS, replace=False))]
        self.items = int(len(x))
        mean = x.mean(0, dtype=np.float64).astype(np.float32)
        centred = x - mean
        cov = (centred.T @ centred).astype(np.float64) / max(self.items - 1, 1)
        w, v = np.linalg.eigh(cov)
        order = np.argsort(w)[::-1]
        self.mean = mean
        self.variances = np.maximum(w[order], 0.0)
        self.axes = np.ascontiguousarray(v[:, order].T, dtype=np.float32)  # D × D, rows

    def codec(self, dtype: str) -> "TransformCodec":
        """The codebook of storage ``dtype`` on these axes."""
        widths = allocate(self.variances, CODECS[dtype], self.dim)
        keep = int(np.count_nonzero(widths))  # widths do not increase along the axes
        return TransformCodec(dtype, self.mean, self.axes[:keep], widths[:keep], self.items)


def allocate(variances: np.ndarray, bits: float, dim: int, max_width: int = MAX_WIDTH) -> np.ndarray:
    """Integer bit widths (uint8, one per axis, non-increasing with the variances given largest
    first) by reverse water-filling, averaging at most ``bits`` over ``dim`` dimensions."""
    budget = int(round(bits * dim))
    half = 0.5 * np.log2(np.maximum(np.asarray(variances, dtype=np.float64), 1e-300))

    def widths(t: float) -> np.ndarray:
        return np.clip(np.rint(half - t), 0, max_width)

    lo_t, hi_t = float(half.min()) - max_width - 1.0, float(half.max()) + 1.0  # all at the cap / all zero
    if widths(lo_t).sum() <= budget:
        return widths(lo_t).astype(np.uint8)
    for _ in range(100):
        mid = 0.5 * (lo_t + hi_t)
        if widths(mid).sum() > budget:
            lo_t = mid
        else:
            hi_t = mid
    out = widths(hi_t)
    spare = budget - int(out.sum())
    if spare > 0:  # the bits rounding left: to the axes rounded down the most
        room = np.where(out < max_width, half - hi_t - out, -np.inf)
        out[np.argsort(-room, kind="stable")[:min(spare, int(np.isfinite(room).sum()))]] += 1
    # non-increasing along the axes (it is: among equal widths the larger variance is rounded down
    # more), so that the runs of equal widths are contiguous
    return np.minimum.accumulate(out).astype(np.uint8)


def fit_ranges(coefficients: np.ndarray, widths: np.ndarray, block: int = 256, rows: int | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lo, step) float32 per axis: the quantile pair of :data:`RANGE_QUANTILES` whose uniform
    quantiser of ``2^width`` levels has the least squared error on ``coefficients`` (rows × axes;
    the quantiles and errors taken on at most ``rows`` (:data:`RANGE_ROWS`) of them, ``p = 0`` is
    the minimum and maximum of all)."""
    n, k = coefficients.shape
    lo_out = np.zeros(k, dtype=np.float32)
    step_out = np.ones(k, dtype=np.float32)
    if not k or not n:
        return lo_out, step_out
    limit = RANGE_ROWS if rows is None else int(rows)
    pick = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False)) if n > limit else None
    m = n if pick is None else limit
    p = np.asarray(RANGE_QUANTILES, dtype=np.float64)
    low_at = np.rint(p * (m - 1)).astype(np.int64)
    high_at = (m - 1) - low_at
    for a in range(0, k, block):
        b = min(k, a + block)
        z = np.sort(coefficients[:, a:b] if pick is None else coefficients[pick, a:b], axis=0)
        levels = (2.0 ** widths[a:b].astype(np.float64) - 1.0).astype(np.float32)
        best = np.full(b - a, np.inf)
        for i in range(len(p)):
            if p[i] == 0.0:  # the whole shard's extremes: nothing clipped
                lo, hi = coefficients[:, a:b].min(0), coefficients[:, a:b].max(0)
            else:
                lo, hi = z[low_at[i]], z[high_at[i]]
            step = np.maximum(hi - lo, np.float32(1e-12)) / levels
            q = np.clip(np.rint((z - lo) / step), 0, levels)
            err = ((q * step + lo - z) ** 2).mean(0, dtype=np.float64)
            better = err < best
            best[better] = err[better]
            lo_out[a:b][better] = lo[better]
            step_out[a:b][better] = step[better]
    return lo_out, step_out


class TransformCodec:
    """A fitted codebook (mean, axes, bit widths): codes a shard's rows to fixed-width bytes and its
    range per axis, decodes them, and scores queries against codes in the rotated space (see the
    module docstring). A shard's range is ``2 × K`` float32: its ``lo`` row, then its ``step`` row."""

    def __init__(self, dtype: str, mean: np.ndarray, rotation: np.ndarray, widths: np.ndarray, items: int = 0,
                 error: float = 0.0) -> None:
        if dtype not in CODECS:
            raise ValueError(f"not a transform-coded storage: {dtype!r}")
        self.dtype = dtype
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.rotation = np.ascontiguousarray(rotation, dtype=np.float32).reshape(-1, len(self.mean))
        self.widths = np.ascontiguousarray(widths, dtype=np.uint8)
        self.items = int(items)
        #: relative squared error (:meth:`encode_measured`) of the sample it was fitted on, coded as one shard
        self.error = float(error)
        self.dim = int(len(self.mean))
        k = len(self.widths)
        if self.rotation.shape[0] != k or (k and (self.widths.min() < 1 or self.widths.max() > MAX_WIDTH)):
            raise ValueError("inconsistent codebook arrays")
        offsets = np.concatenate([[0], np.cumsum(self.widths.astype(np.int64))])
        self.total_bits = int(offsets[-1])
        #: bytes of one row's code
        self.code_bytes = max(1, (self.total_bits + 7) // 8)
        offsets = offsets[:-1]
        self._byte = offsets // 8
        self._shift = (24 - offsets % 8 - self.widths).astype(np.uint32)
        self._mask = ((np.uint32(1) << self.widths.astype(np.uint32)) - np.uint32(1)).astype(np.uint32)
        self._levels = self._mask.astype(np.float32)
        self._groups = _runs(self.widths)
        self.sha256: str | None = None
        self.file: str | None = None

    @property
    def components(self) -> int:
        """Axes kept (with at least one bit)."""
        return int(len(self.widths))

    def check_range(self, value_range: np.ndarray) -> np.ndarray:
        """A shard's range as float32 2 × K. Raises ValueError when its shape is not this codebook's."""
        value_range = np.asarray(value_range, dtype=np.float32)
        if value_range.shape != (2, self.components):
            raise ValueError(f"a range of shape {value_range.shape} for a codebook of {self.components} axes")
        return value_range

    # ------------------------------------------------------------------ coding
    def coefficients(self, x: np.ndarray) -> np.ndarray:
        """float32 coefficients ``R(x − μ)`` (N × K) of float32 rows."""
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.rotation.T

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 row codes N × :attr:`code_bytes`, the rows' range 2 × K float32) of float32 rows
        (N × D) coded as one shard."""
        return self.encode_measured(x)[:2]

    def encode_measured(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """:meth:`encode` and the relative squared error of the decoded rows,
        ``Σ ‖x − x̂‖² / Σ ‖x − μ‖²`` (the part outside the kept axes plus the quantisation of the
        kept ones, taken in the rotated space: nothing decoded)."""
        x = np.asarray(x, dtype=np.float32)
        z = self.coefficients(x)
        lo, step = fit_ranges(z, self.widths)
        out = np.zeros((len(z), self.code_bytes), dtype=np.uint8)
        spread = kept = quantised = 0.0
        for a in range(0, len(z), BLOCK):
            b = min(len(z), a + BLOCK)
            codes = np.clip(np.rint((z[a:b] - lo) / step), 0, self._levels)
            out[a:b] = self.pack(codes.astype(np.uint32))
            spread += float(((x[a:b] - self.mean) ** 2).sum(dtype=np.float64))
            kept += float((z[a:b] ** 2).sum(dtype=np.float64))
            quantised += float(((codes * step + lo - z[a:b]) ** 2).sum(dtype=np.float64))
        error = (max(spread - kept, 0.0) + quantised) / spread if spread > 0 else 0.0
        return out, np.stack([lo, step]), error

    def drifted(self, error: float) -> bool:
        """Whether rows coded with relative squared error ``error`` are unlike the sample this
        codebook was fitted on (more than :data:`DRIFT_RATIO` times its error)."""
        return bool(self.error > 0 and error > DRIFT_RATIO * self.error)

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """uint32 codes (N × K) → uint8 rows (N × :attr:`code_bytes`), big-endian bit fields."""
        n = len(codes)
        bits = np.zeros((n, self.code_bytes * 8), dtype=np.uint8)
        for start, stop, width, offset in self._groups:
            # each code's big-endian bytes as bits (8 or 16 of them), its low `width` bits kept
            field = codes[:, start:stop].astype(np.uint8 if width <= 8 else ">u2")
            spread = np.unpackbits(field.view(np.uint8).reshape(n, stop - start, -1), axis=2)
            bits[:, offset:offset + (stop - start) * width] = spread[:, :, spread.shape[2] - width:].reshape(n, -1)
        return np.packbits(bits, axis=1)

    def unpack(self, stored: np.ndarray) -> np.ndarray:
        """uint8 rows → uint32 codes (N × K): each field read from the three bytes it may span, a
        few rows at a time (:data:`UNPACK_ROWS`: the gathers stay in the CPU cache)."""
        stored = np.asarray(stored, dtype=np.uint8).reshape(-1, self.code_bytes)
        n = len(stored)
        out = np.empty((n, self.components), dtype=np.uint32)
        padded = np.zeros((min(n, UNPACK_ROWS), self.code_bytes + 2), dtype=np.uint8)
        for a in range(0, n, UNPACK_ROWS):
            b = min(n, a + UNPACK_ROWS)
            rows = padded[: b - a]
            rows[:, : self.code_bytes] = stored[a:b]
            word = out[a:b]
            np.copyto(word, rows[:, self._byte])
            word <<= 8
            word |= rows[:, self._byte + 1]
            word <<= 8
            word |= rows[:, self._byte + 2]
            word >>= self._shift
            word &= self._mask
        return out

    def coefficients_of(self, stored: np.ndarray, value_range: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 coefficients ``ẑ = lo + code · step`` (N × K) of a shard's uint8 row codes and
        its range, into ``out`` when given: the rows in the rotated space, not decoded."""
        lo, step = self.check_range(value_range)
        stored = np.asarray(stored, dtype=np.uint8).reshape(-1, self.code_bytes)
        if out is None:
            out = np.empty((len(stored), self.components), dtype=np.float32)
        for a in range(0, len(stored), UNPACK_ROWS):
            b = min(len(stored), a + UNPACK_ROWS)
            block = out[a:b]
            np.copyto(block, self.unpack(stored[a:b]), casting="unsafe")
            block *= step
            block += lo
        return out

    def decode(self, stored: np.ndarray, value_range: np.ndarray) -> np.ndarray:
        """float32 rows (N × D) of a shard's uint8 row codes and its range: ``μ + Rᵀ ẑ``."""
        stored = np.asarray(stored, dtype=np.uint8).reshape(-1, self.code_bytes)
        out = np.empty((len(stored), self.dim), dtype=np.float32)
        for a in range(0, len(stored), BLOCK):
            b = min(len(stored), a + BLOCK)
            np.matmul(self.coefficients_of(stored[a:b], value_range), self.rotation, out=out[a:b])
            out[a:b] += self.mean
        return out

    # ------------------------------------------------------------------ scoring in the rotated space
    def prepare(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q · μ: B float64, R q: B × K float32) of float32 queries (B × D): what :meth:`scores`
        needs of them, for every shard coded with this codebook."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(q) <= FEW_QUERIES:
            # numpy's own single-threaded loop: OpenBLAS splits a matrix-vector product over its
            # threads, which next to FAISS's threads on a loaded machine costs several times more
            rq = np.einsum("kd,bd->bk", self.rotation, q)
        else:
            rq = (self.rotation @ q.T).T
        return q @ self.mean.astype(np.float64), np.ascontiguousarray(rq, dtype=np.float32)

    def scores(self, stored: np.ndarray, value_range: np.ndarray, prepared: tuple[np.ndarray, np.ndarray],
               which: np.ndarray) -> np.ndarray:
        """Inner products (float32) of a shard's row codes ``stored`` (N × W, its range
        ``value_range``) with the prepared queries ``which`` (N: each row's query), without
        decoding the rows: ``q · μ + (R q) · ẑ``, ``ẑ = lo + code · step``."""
        return self.scores_parts(stored, [(len(stored), value_range)], prepared, which)

    def scores_parts(self, stored: np.ndarray, parts: list[tuple[int, np.ndarray]], prepared: tuple[np.ndarray, np.ndarray],
                     which: np.ndarray) -> np.ndarray:
        """:meth:`scores` of the rows of several shards at once: ``stored`` is their rows one shard
        after the other, ``parts`` each shard's (rows, range)."""
        qmu, rq = prepared
        stored = np.asarray(stored, dtype=np.uint8).reshape(-1, self.code_bytes)
        which = np.asarray(which, dtype=np.int64)
        out = np.empty(len(stored), dtype=np.float64)
        buffer = np.empty((min(len(stored), UNPACK_ROWS), self.components), dtype=np.float32)
        start = 0
        for count, value_range in parts:
            for a in range(start, start + count, UNPACK_ROWS):
                b = min(start + count, a + UNPACK_ROWS)
                block = self.coefficients_of(stored[a:b], value_range, out=buffer[: b - a])
                out[a:b] = np.einsum("ij,ij->i", block, rq[which[a:b]], dtype=np.float64)
            start += count
        if start != len(stored):
            raise ValueError(f"parts of {start} rows for {len(stored)} stored rows")
        return (qmu[which] + out).astype(np.float32)

    # ------------------------------------------------------------------ file
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, format=np.array(FORMAT), version=np.array(VERSION), dtype=np.array(self.dtype), mean=self.mean,
                 rotation=self.rotation, widths=self.widths, items=np.array(self.items), error=np.array(self.error))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "codebook") -> "TransformCodec":
        """Raises: IndexCorrupt: not a medcbir codebook."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if str(z["format"]) != FORMAT or int(z["version"]) != VERSION:
                    raise ValueError(f"format {z['format']} version {z['version']}")
                return cls(str(z["dtype"]), z["mean"], z["rotation"], z["widths"], int(z["items"]), float(z["error"]))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise IndexCorrupt(f"{name}: not a readable medcbir codebook ({exc})") from None

    def record(self) -> dict:
        """What the manifest records of this codebook besides its file record."""
        return {"dtype": self.dtype, "bits": CODECS[self.dtype], "components": self.components, "code_bytes": self.code_bytes,
                "fit_items": self.items, "error": float(f"{self.error:.4g}")}

    def save(self, index_dir: Path) -> dict:
        """Write (or find, same content) ``codec-<hash>.npz`` in ``index_dir``: temporary name,
        fsync, rename. Returns its record ``{file, bytes, sha256}`` (+ :meth:`record`)."""
        data = self.to_bytes()
        digest = hashlib.sha256(data).hexdigest()
        final = Path(index_dir) / f"{PREFIX}{digest[:16]}.npz"
        if not (final.is_file() and final.stat().st_size == len(data) and sha256_file(final) == digest):
            tmp = tmp_name(final)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            commit_file(tmp, final, hook="codebook-fsync")
        self.sha256, self.file = digest, final.name
        return {"file": final.name, "bytes": len(data), "sha256": digest, **self.record()}


def _runs(widths: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(first axis, end axis, width, first bit) of each run of equal widths."""
    out, start, bit = [], 0, 0
    for i in range(1, len(widths) + 1):
        if i == len(widths) or widths[i] != widths[start]:
            w = int(widths[start])
            out.append((start, i, w, bit))
            bit += (i - start) * w
            start = i
    return out


def fit(sample: np.ndarray, dtype: str, seed: int = 0) -> TransformCodec:
    """The codebook of storage ``dtype`` fitted on ``sample`` (float32 rows; at most
    :data:`FIT_ITEMS` of them used), with its relative squared error on them coded as one shard
    (what :meth:`TransformCodec.drifted` compares a shard's with)."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if len(x) > FIT_ITEMS:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), FIT_ITEMS, replace=False))]
    codec = Principal(x, seed).codec(dtype)
    codec.error = codec.encode_measured(x)[2]
    return codec


class CrossFit:
    """Rows of a sample coded by codebooks fitted without them (two folds), in blocks of
    ``block`` rows each with its own range (as shards are written): what a codebook does to the
    rows of the shards written after it. The folds' principal axes are shared by every bit budget."""

    def __init__(self, sample: np.ndarray, seed: int = 0, block: int | None = None) -> None:
        self.x = np.ascontiguousarray(sample, dtype=np.float32)
        order = np.random.default_rng(seed).permutation(len(self.x))
        half = len(order) // 2
        self.folds = [np.sort(order[:half]), np.sort(order[half:])]
        self.block = int(block) if block else None
        self._principal: dict[int, Principal] = {}
        self.seed = seed

    def fits(self) -> bool:
        """Whether each fold has enough rows for a codebook (:func:`min_fit_items`)."""
        return min(len(f) for f in self.folds) >= min_fit_items(self.x.shape[1])

    def not_measured(self) -> str | None:
        """Why a transform code cannot be measured on this sample (None when it can)."""
        if self.fits():
            return None
        return f"not measured: {len(self.x)} items, a codebook needs {2 * min_fit_items(self.x.shape[1])}"

    def decoded(self, dtype: str) -> np.ndarray:
        """float32 rows of the sample, each coded and decoded by the codebook of the other fold."""
        out = np.empty_like(self.x)
        for i, rows in enumerate(self.folds):
            other = 1 - i
            if other not in self._principal:
                self._principal[other] = Principal(self.x[self.folds[other]], self.seed)
            codec = self._principal[other].codec(dtype)
            step = self.block or len(rows)
            for a in range(0, len(rows), max(1, step)):
                part = rows[a:a + step]
                out[part] = codec.decode(*codec.encode(self.x[part]))
        return out


# ---------------------------------------------------------------------------- loading, cached
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8
_LOCK = threading.Lock()


def load(path: str | Path, sha256: str | None = None, shard: str | None = None) -> TransformCodec:
    """The codebook at ``path`` (cached per process by file identity), checked against the sha256
    a shard recorded.

    Raises:
        IndexCorrupt: the file is missing, unreadable, or not the one ``shard`` was coded with.
    """
    path = Path(path)
    who = f"{shard}: its codebook {path.name}" if shard else f"codebook {path.name}"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IndexCorrupt(f"{who} is missing from {path.parent}") from None
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    with _LOCK:
        codec = _CACHE.get(key)
        if codec is not None:
            _CACHE.move_to_end(key)
    if codec is None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if sha256 and digest != sha256:
            raise IndexCorrupt(f"{who} differs from the one it was coded with (sha256 {digest[:12]}… != {sha256[:12]}…)")
        codec = TransformCodec.from_bytes(data, path.name)
        codec.sha256, codec.file = digest, path.name
        with _LOCK:
            _CACHE[key] = codec
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    if sha256 and codec.sha256 != sha256:
        raise IndexCorrupt(f"{who} differs from the one it was coded with (sha256 {codec.sha256[:12]}… != {sha256[:12]}…)")
    return codec
