"""Compact vectors: a learned projection, the RAM a spec needs per item, float16 shard storage.

An archive of tens of millions of images cannot keep its embeddings in RAM at full precision
(a 2020-d float32 embedding is 8 KB). Three measured ways to shrink what search needs:

- **a learned projection** (the ``PCAU{d},`` prefix of a spec): the top ``d`` eigenvectors of the
  *uncentred* second moment of the archive's own training sample. Uncentred, because the index
  ranks by inner product: with a projection ``P`` whose rows are orthonormal, ``(Pq)·(Px)`` is
  ``q·x`` minus the part of both outside the kept subspace, whereas a centred PCA (FAISS's
  ``PCA``/``PCAR``) ranks by ``(q−μ)·(x−μ)``, which for embeddings sharing a large mean direction
  orders neighbours by ``μ·x`` as much as by ``q·x``. Everything after the prefix (coarse
  quantiser, codes, re-rank store) lives in the projected space;
- **a compact re-rank store**: ``Refine(SQfp16)`` (2 bytes per projected dimension) or
  ``Refine(SQ8)`` (1 byte) instead of ``Refine(Flat)``'s float32 copy of every embedding;
- **compact shards** (:func:`choose_storage`): the HDF5 shards store embeddings as transform
  codes (``tc4``/``tc6``/``tc8``: 4/6/8 bits per dimension on average under a codebook fitted on
  the index's own sample, :mod:`.transform_codec`), 8-bit per-dimension scalar-quantised codes
  (``sq8``, each shard's own range) or in float16, the smallest of them whose exact search over
  the stored-and-decoded vectors returns the same top-10 as over the float32 ones
  (:data:`FLOAT16_RECALL`); float32 otherwise.

``auto`` measures: with a memory budget (bytes of RAM per item for search, ``--memory-budget``)
it tries only the chains whose :func:`bytes_per_item` fits (:func:`compact_candidates`), in
order of search cost, and keeps the first one reaching the recall target on held-out queries
(:func:`medcbir.indexer.recall.choose`).
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from medcbir.errors import ConfigError
from medcbir.indexer import transform_codec
from medcbir.indexer.checksum import stamp
from medcbir.indexer.faiss_spec import SHARDS_RERANK, is_flat, reranks_from_shards, split_projection, split_refine
from medcbir.indexer.shard import Decoder, sq_encode
from medcbir.indexer.transform_codec import CrossFit, TransformCodec, is_transform

#: projected dimensions ``auto`` tries (those below the embedding dimension), smallest first; a
#: dimension whose exact search already misses the target is skipped (``recall.choose``)
PROJECTION_DIMS = (64, 128, 256, 384, 512)
#: bytes of the id FAISS keeps per item in an inverted list
IVF_ID_BYTES = 8
#: float16 storage is kept when exact recall@10 on the rounded vectors reaches this: what rounding
#: changes is then the order of neighbours whose scores differ by less than float16 resolves, a
#: loss well below the standard error of the 200-query measurements that hold an index to its
#: recall target
FLOAT16_RECALL = 0.995
#: queries of that measurement (items of the first shard written)
FLOAT16_QUERIES = 200

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1024**2,
          "g": 1e9, "gb": 1e9, "gib": 1024**3, "t": 1e12, "tb": 1e12, "tib": 1024**4}


def parse_budget(text: str | float | int | None) -> float | None:
    """``--memory-budget``: bytes of RAM per indexed item for search (``1000``, ``1KB``, ``1.5KiB``).

    Raises:
        ConfigError: not a positive size.
    """
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _SIZE.match(str(text))
        unit = (match[2] or "").lower() if match else None
        if not match or unit not in _UNITS:
            raise ConfigError(f"--memory-budget {text!r} is not a size in bytes per item (e.g. 1000, 1KB, 1.5KiB)")
        value = float(match[1]) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"--memory-budget must be positive, not {text!r}")
    return value


def principal_axes(sample: np.ndarray) -> np.ndarray:
    """Eigenvectors of the uncentred second moment ``sampleᵀ·sample / n`` as rows, largest
    eigenvalue first (dim × dim)."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    moment = (x.T @ x).astype(np.float64) / max(len(x), 1)
    w, v = np.linalg.eigh(moment)
    return np.ascontiguousarray(v[:, np.argsort(w)[::-1]].T)


def fit_projection(sample: np.ndarray, d: int, axes: np.ndarray | None = None) -> faiss.LinearTransform:
    """The uncentred PCA of ``sample`` to ``d`` dimensions as a trained ``faiss.LinearTransform``
    (rows of ``A``: the top-``d`` eigenvectors of ``sampleᵀ·sample``; no offset). ``axes``: the
    sample's :func:`principal_axes`, when already computed."""
    dim = int(np.shape(sample)[1])
    if not 0 < d < dim:
        raise ValueError(f"a projection to {d} dimensions of {dim}-d vectors")
    top = (principal_axes(sample) if axes is None else axes)[:d]
    lt = faiss.LinearTransform(int(dim), int(d), False)
    faiss.copy_array_to_vector(np.ascontiguousarray(top, dtype=np.float32).ravel(), lt.A)
    faiss.copy_array_to_vector(np.zeros(d, dtype=np.float32), lt.b)
    lt.is_trained = True
    return lt


def _code_bytes(spec: str, dim: int) -> float:
    """Bytes per vector of a base or refine spec's codes (FAISS's ``sa_code_size``, without the
    coarse list number)."""
    text = spec.replace(" ", "")
    upper = text.upper()
    if is_flat(text):
        return 4.0 * dim
    sq = re.search(r"SQ(fp16|bf16|8|6|4)", text, re.I)
    if sq:
        kind = sq[1].lower()
        return {"fp16": 2.0, "bf16": 2.0, "8": 1.0, "6": 0.75, "4": 0.5}[kind] * dim
    pq = re.search(r"PQ(\d+)(?:x(\d+))?", text, re.I)
    if pq:
        return int(pq[1]) * int(pq[2] or 8) / 8.0
    if upper.endswith(",FLAT") or upper.startswith("HNSW"):
        return 4.0 * dim
    return 4.0 * dim


def bytes_per_item(spec: str, dim: int) -> float:
    """RAM per item a spec needs to search (codes, re-rank store, ids; not the small trained
    parts): an estimate from the factory string, checked against FAISS in the tests."""
    projected, rest = split_projection(spec)
    d = projected or dim
    base, refine = split_refine(rest)
    upper = base.upper()
    if is_flat(base):
        total = 4.0 * d
    elif upper.startswith("HNSW"):
        m = int(re.match(r"HNSW(\d+)", upper)[1]) if re.match(r"HNSW(\d+)", upper) else 32
        total = _code_bytes(base.split(",", 1)[1] if "," in base else "Flat", d) + 2 * m * 4 * 1.05
    else:
        total = _code_bytes(base, d) + (IVF_ID_BYTES if "IVF" in upper else 0)
    if refine is not None and not reranks_from_shards(spec):  # a re-rank from the shards holds nothing in RAM
        total += _code_bytes(refine, d)
    return float(total)


#: projected dimensions of the chains that re-rank from the shards (``…,SQ8,Refine(Shards)``),
#: tried first under a memory budget
SHARD_RERANK_DIMS = (128, 256)


def compact_candidates(dim: int, nlist: int) -> list[str]:
    """Projected chains ``auto`` may try under a memory budget.

    First the chains that re-rank from the shards (:data:`SHARD_RERANK_DIMS`, smallest first):
    IVF-SQ8 codes of the projection in RAM, each query's candidates re-scored with their
    full-dimension embeddings read from the memory-mapped shards — the least RAM (code + id) and
    the least disk (no re-rank store next to the shards) of all chains, and no ceiling from the
    projection (the re-rank is in the full dimension). Then, cheapest search first, for each
    projected dimension below ``dim``: IVF-PQ then IVF-SQ8 codes, re-ranked from an 8-bit then a
    float16 store of the projected vectors in RAM."""
    out = [f"PCAU{d},IVF{nlist},SQ8,Refine({SHARDS_RERANK})" for d in SHARD_RERANK_DIMS if d < dim]
    for d in PROJECTION_DIMS:
        if d >= dim:
            break
        m = max(k for k in range(1, d // 4 + 1) if d % k == 0)  # PQ with one byte per 4 dimensions
        for code in (f"PQ{m}", "SQ8"):
            for store in ("SQ8", "SQfp16"):
                if code == "SQ8" and store == "SQ8":
                    continue  # an 8-bit re-rank of 8-bit codes re-scores nothing new
                out.append(f"PCAU{d},IVF{nlist},{code},Refine({store})")
    return out


def float16_costs_nothing(embeddings: np.ndarray, queries: int = FLOAT16_QUERIES, seed: int = 0) -> dict:
    """Exact recall@10 over float16-rounded ``embeddings`` against float32, on up to ``queries``
    of them (each query's own row dropped): ``{"recall_at_10", "max_abs_error", "queries",
    "items", "float16": bool}``; ``float16`` is True when the recall reaches
    :data:`FLOAT16_RECALL` and the rounding moves no component by more than 1e-3."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    out = _exact_recall(x, x.astype(np.float16).astype(np.float32), queries, seed)
    out["float16"] = bool(out["recall_at_10"] >= FLOAT16_RECALL and out["max_abs_error"] <= 1e-3)
    return out


def storage_costs_nothing(embeddings: np.ndarray, dtype: str, queries: int = FLOAT16_QUERIES, seed: int = 0,
                          cross: CrossFit | None = None) -> dict:
    """:func:`float16_costs_nothing` for any shard storage: exact recall@10 over ``embeddings``
    stored as ``dtype`` and decoded (``sq8``/``sq6``: each shard's per-dimension range, as
    :func:`medcbir.indexer.shard.write_shard` stores them; ``tc*``: each half of the rows coded by
    a codebook fitted on the other half, :class:`~.transform_codec.CrossFit` — ``cross``, shared
    by the bit budgets — what a codebook does to the rows of later shards) against float32, on up
    to ``queries`` of them: ``{"recall_at_10", "max_abs_error", "queries", "items", "free": bool}``;
    ``free`` when the recall reaches :data:`FLOAT16_RECALL` (and float16 moves no component by
    more than 1e-3)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if dtype == "float16":
        out = float16_costs_nothing(x, queries, seed)
        out["free"] = out.pop("float16")
        return out
    if is_transform(dtype):
        decoded = (cross or CrossFit(x, seed)).decoded(dtype)
    else:
        codes, value_range = sq_encode(x, dtype)
        decoded = Decoder(dtype, x.shape[1], value_range).decode(codes)
    out = _exact_recall(x, decoded, queries, seed)
    out["free"] = bool(out["recall_at_10"] >= FLOAT16_RECALL)
    return out


#: shard storages ``--shard-dtype auto`` measures, fewest bytes first
AUTO_STORAGES = ("tc4", "tc6", "tc8", "sq8", "float16")


def choose_storage(embeddings: np.ndarray, queries: int = FLOAT16_QUERIES) -> dict:
    """The smallest shard storage of :data:`AUTO_STORAGES` that costs no measured recall on
    ``embeddings`` (the first shard's), float32 when none: the manifest's ``storage`` record
    ``{"dtype", "recall_at_10", "max_abs_error", "queries", "items", "tried"}`` (``tried``: each
    measured storage's recall@10, or why it was not measured). The transform codes are measured
    only when each half of ``embeddings`` can fit a codebook
    (:func:`~.transform_codec.min_fit_items`); a ``tc*`` choice still needs its codebook fitted on
    all of ``embeddings`` (:func:`fit_codebook`)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    cross = CrossFit(x)
    tried: dict = {}
    measured: dict = {}
    for dtype in AUTO_STORAGES:
        if is_transform(dtype) and not cross.fits():
            tried[dtype] = cross.not_measured()
            continue
        measured = storage_costs_nothing(x, dtype, queries, cross=cross)
        tried[dtype] = measured["recall_at_10"]
        if measured.pop("free"):
            return {"dtype": dtype, **measured, "tried": tried}
    return {"dtype": "float32", **{k: v for k, v in measured.items() if k != "free"}, "tried": tried}


def fit_codebook(index_dir: Path, dtype: str, sample: np.ndarray) -> tuple[TransformCodec, dict]:
    """(the ``dtype`` codebook fitted on ``sample``, saved in ``index_dir``; its manifest record
    ``{file, bytes, sha256, xxh3, dtype, bits, components, code_bytes, fit_items}``)."""
    codec = transform_codec.fit(sample, dtype)
    return codec, stamp(codec.save(index_dir), index_dir)


def _exact_recall(x: np.ndarray, stored: np.ndarray, queries: int, seed: int) -> dict:
    n = len(x)
    error = float(np.abs(stored - x).max()) if n else 0.0
    if n < 2:
        return {"recall_at_10": 1.0, "max_abs_error": error, "queries": 0, "items": n}
    k = min(10, n - 1)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, queries), replace=False))
    _, exact = faiss.knn(x[rows], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = faiss.knn(np.ascontiguousarray(stored[rows]), stored, k + 1, metric=faiss.METRIC_INNER_PRODUCT)

    def top(row, own):
        return set([i for i in row.tolist() if i != own][:k])

    hits = [len(top(a, r) & top(b, r)) / k for a, b, r in zip(exact, found, rows)]
    return {"recall_at_10": round(float(np.mean(hits)), 4), "max_abs_error": error, "queries": int(len(rows)), "items": int(n)}


def describe(spec: str, dim: int) -> dict:
    """The chain of ``spec`` as the manifest records it: ``{"projection", "index", "codes",
    "rerank", "bytes_per_item"}`` (``projection`` None without one, ``rerank`` None without a
    re-rank step, ``"shards"`` for a re-rank from the shards' embeddings)."""
    projected, rest = split_projection(spec)
    base, refine = split_refine(rest)
    parts = base.split(",")
    coarse = parts[0] if parts and parts[0].upper().startswith(("IVF", "HNSW")) else None
    codes = ",".join(parts[1:]) if coarse else base
    if reranks_from_shards(spec):
        refine = "shards"  # the full-dimension embeddings of the HDF5 shards, memory-mapped
    return {"projection": f"PCAU{projected}" if projected else None, "index": coarse or base, "codes": codes or None,
            "rerank": refine, "dims": int(projected or dim), "bytes_per_item": round(bytes_per_item(spec, dim), 1)}
