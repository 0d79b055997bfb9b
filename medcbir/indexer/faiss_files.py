"""Storage of a trained FAISS index: per-shard parts (standalone codes or whole indexes), the
zero-copy exact index, and combining every shard's part into the searchable index at open.

See :mod:`medcbir.indexer.faiss_index` for the layout on disk and why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from medcbir.indexer.faiss_spec import is_projected, try_extract_ivf
from medcbir.indexer.fsutil import commit_file, sha256_file, tmp_name


def parts(trained: faiss.Index) -> tuple[faiss.Index, faiss.Index | None]:
    """(base, refine) templates of a trained factory index, each an independent empty copy.

    A projected chain (``IndexPreTransform``) is not split: its whole copy is the base template
    (its shard parts hold the codes of every level, :func:`write_shard_part`) and refine is None.
    """
    index = faiss.downcast_index(trained)
    if is_projected(index):
        return faiss.clone_index(index), None
    if isinstance(index, faiss.IndexRefine):
        return faiss.clone_index(index.base_index), faiss.clone_index(index.refine_index)
    return faiss.clone_index(index), None


def mergeable(base: faiss.Index) -> bool:
    """IVF bases merge with ``merge_from``; fast-scan IVF does not (heap corruption in 1.15)."""
    base = faiss.downcast_index(base)
    return isinstance(base, faiss.IndexIVF) and not isinstance(base, faiss.IndexIVFFastScan)


def chain_levels(index: faiss.Index) -> tuple[faiss.VectorTransform, faiss.Index, faiss.Index | None]:
    """(projection, base, refine or None) of a projected chain (the objects inside ``index``)."""
    index = faiss.downcast_index(index)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        return index.chain.at(0), faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)
    return index.chain.at(0), inner, None


def chain_codes(index: faiss.Index, embeddings: np.ndarray) -> np.ndarray:
    """One shard's row of codes for a projected chain: the base's standalone code (coarse list
    number first) then the re-rank store's code of the projected vector."""
    projection, base, refine = chain_levels(index)
    x = projection.apply(np.ascontiguousarray(embeddings, dtype=np.float32))
    codes = base.sa_encode(x)
    return codes if refine is None else np.ascontiguousarray(np.hstack([codes, refine.sa_encode(x)]))


def uses_codes(base: faiss.Index) -> bool:
    """True when a shard's part of ``base`` is stored as FAISS standalone codes (``sa_encode``).

    For IVF indexes (not fast-scan) each shard file is then an ``.npy`` of N × ``sa_code_size``
    bytes (coarse list number + the list's code), and opening adds all shards' codes with a
    single ``add_sa_codes`` call: much faster than ``merge_from`` of per-shard FAISS files
    (profiled at 1M items, the ``merge_from`` calls were the largest part of opening).
    A projected chain over an IVF base stores its codes too (:func:`chain_codes`).
    """
    if is_projected(base):
        return mergeable(chain_levels(base)[1])
    return mergeable(base)


def write_shard_part(base_template: faiss.Index, ids: np.ndarray, embeddings: np.ndarray, stem: Path) -> dict:
    """Encode one shard for the trained base and commit its file next to the shard.

    Args:
        base_template: the trained, empty base index.
        ids: the shard's int64 ids.
        embeddings: its float32 vectors.
        stem: ``INDEX/shard-NNNNNN`` (the suffix is chosen here).

    Returns:
        the manifest record ``{file, bytes, sha256, kind}``; ``kind`` is ``"sa_codes"``
        (``.codes.npy``) or ``"faiss"`` (``.faiss``, a whole index holding the shard's vectors).
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if uses_codes(base_template):
        path = stem.with_name(stem.name + ".codes.npy")
        tmp = tmp_name(path)
        codes = chain_codes(base_template, embeddings) if is_projected(base_template) else base_template.sa_encode(embeddings)
        with open(tmp, "wb") as fh:
            np.save(fh, codes, allow_pickle=False)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        commit_file(tmp, path, hook="faiss-fsync")
        return {"file": path.name, "bytes": size, "sha256": digest, "kind": "sa_codes"}
    path = stem.with_name(stem.name + ".faiss")
    size, digest = write_index(shard_index(base_template, ids, embeddings), path)
    return {"file": path.name, "bytes": size, "sha256": digest, "kind": "faiss"}


def read_codes(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _code_runs(shard_files, width: int, first: int = 0) -> tuple[list[tuple[np.ndarray, int]], int]:
    """Each shard's codes file read with the id of its first row (``first`` on), checked to be
    ``width`` bytes wide; and the id after the last row."""
    runs, lo = [], int(first)
    for path in shard_files:
        codes = read_codes(path)
        if codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"{path.name}: codes of width {codes.shape[-1]}, expected {width}")
        runs.append((codes, lo))
        lo += len(codes)
    return runs, lo


def shard_index(base_template: faiss.Index, ids: np.ndarray, embeddings: np.ndarray) -> faiss.Index:
    """A copy of the trained base holding one shard's vectors under their ids."""
    base = faiss.clone_index(base_template)
    if try_extract_ivf(base) is None:
        base = faiss.IndexIDMap2(base)
    base.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return base


def write_index(index: faiss.Index, path: Path, hook: str | None = "faiss-fsync") -> tuple[int, str]:
    """Write a FAISS index under a temporary name and commit it; returns (bytes, sha256)."""
    tmp = tmp_name(path)
    faiss.write_index(index, str(tmp))
    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    commit_file(tmp, path, hook=hook)
    return size, digest


def _flat_layout(dim: int) -> tuple[bytes, int]:
    """(header, ntotal offset) of FAISS's serialised ``IndexFlatIP``, learnt from FAISS itself.

    The serialisation is header + float count (int64) + the vectors; serialising 1 and 2
    vectors shows which header bytes hold ``ntotal``.
    """
    blobs = []
    for n in (1, 2):
        flat = faiss.IndexFlatIP(int(dim))
        flat.add(np.zeros((n, dim), dtype=np.float32))
        blob = faiss.serialize_index(flat).tobytes()
        blobs.append(blob[: len(blob) - n * dim * 4 - 8])
    diff = [i for i, (a, b) in enumerate(zip(*blobs)) if a != b]
    if len(blobs[0]) != len(blobs[1]) or not diff or blobs[0][diff[0] : diff[0] + 8] != (1).to_bytes(8, "little"):
        raise RuntimeError("unexpected IndexFlatIP serialisation")
    return blobs[0], diff[0]


def flat_from(fill: Callable[[np.ndarray], None], n: int, dim: int) -> faiss.IndexFlatIP:
    """An ``IndexFlatIP`` of ``n`` vectors that ``fill`` writes in place, without a copy.

    The vectors live in a numpy buffer laid out as FAISS's own serialisation of the index and
    opened zero-copy (``ZeroCopyIOReader`` + ``IO_FLAG_MMAP_IFC``): the data are written once,
    instead of FAISS zero-filling its own buffer (``codes.resize``, seconds at 1M×512) and the
    data being written over it. The returned index keeps the buffer alive
    (``referenced_objects``).
    """
    header, at = _flat_layout(dim)
    size = n * dim * 4
    head = len(header) + 8
    # np.zeros (calloc: fresh zero pages, no huge-page madvise) filled faster through HDF5 reads
    # than np.empty at 1M×512 (benchmarks/RESULTS.md, "Development measurements").
    raw = np.zeros(head + size + 64, dtype=np.uint8)
    shift = (-(raw.ctypes.data + head)) % 64  # vectors 64-byte aligned for BLAS
    blob = raw[shift : shift + head + size]
    blob[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    blob[at : at + 8] = np.frombuffer(int(n).to_bytes(8, "little"), dtype=np.uint8)
    blob[len(header) : head] = np.frombuffer(int(n * dim).to_bytes(8, "little"), dtype=np.uint8)
    if n:
        fill(blob[head:].view(np.float32).reshape(n, dim))
    reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(blob), blob.size)
    flat = faiss.read_index(reader, faiss.IO_FLAG_MMAP_IFC)  # already downcast; keep this proxy (it owns)
    if flat.ntotal != n or flat.d != dim or (n and flat.codes.is_owned):
        raise RuntimeError("zero-copy IndexFlatIP did not map the buffer")
    flat.referenced_objects = [raw, reader]
    return flat


def combine(
    trained: faiss.Index | None,
    shard_files: list[Path],
    fill: Callable[[np.ndarray], None],
    n: int,
    dim: int,
    faiss_gpu: bool = False,
    lists: tuple[Path, int] | None = None,
) -> tuple[faiss.Index, bool]:
    """The searchable index of all committed items.

    Args:
        trained: the trained factory index (None for Flat or not yet trained: exact search).
        shard_files: per-shard FAISS files in shard order (ignored for Flat).
        fill: writes all N×D embeddings, in id order, into the array it is given.
        n: number of committed items.
        dim: embedding dimension.
        faiss_gpu: ignored (kept for callers): the GPU copy is made by :func:`gpu_copy`.
        lists: ``(file, shards it covers)``: the persisted inverted lists of the first shards
            (:func:`filled_base`, written by the writer), memory-mapped instead of filled from
            those shards' codes; the later shards' codes are filled and stacked after them.

    Returns:
        (index, exact): ``exact`` is True for brute-force search.
    """
    if trained is None:
        return flat_from(fill, n, dim), True
    if lists is not None and persistable(trained):
        base = mapped_base(trained, lists[0], shard_files[lists[1]:])
        if base.ntotal != n:
            raise ValueError(f"persisted lists and shard codes hold {base.ntotal} rows, expected {n}")
        if is_projected(trained):
            return base, False
        return _with_refine(base, parts(trained)[1], fill, n, dim, []), False
    if is_projected(trained):
        return combine_chain(trained, shard_files, n), False
    base_template, refine_template = parts(trained)
    keep: list = []
    if shard_files and all(p.name.endswith(".codes.npy") for p in shard_files):
        base = base_template
        runs, lo = [], 0
        for path in shard_files:
            codes = read_codes(path)
            if codes.ndim != 2 or codes.shape[1] != base.sa_code_size():
                raise ValueError(f"shard codes hold {codes.shape}, expected (…, {base.sa_code_size()})")
            runs.append((codes, lo))
            lo += len(codes)
        if lo != n:
            raise ValueError(f"shard codes hold ({lo}, {base.sa_code_size()}), expected ({n}, {base.sa_code_size()})")
        fill_ivf(faiss.downcast_index(base), runs)  # lists sized once (see combine_chain)
        del runs
    elif mergeable(base_template):
        base = base_template
        for path in shard_files:
            part = faiss.read_index(str(path))
            base.merge_from(part, 0)
    else:
        base = faiss.IndexShards(int(dim), False, False)
        for path in shard_files:
            part = faiss.read_index(str(path))
            keep.append(part)
            base.add_shard(part)
    return _with_refine(base, refine_template, fill, n, dim, keep), False


def _with_refine(base: faiss.Index, refine_template: faiss.Index | None, fill: Callable[[np.ndarray], None], n: int, dim: int,
                 keep: list) -> faiss.Index:
    """``base`` under its refine step (filled from the shards' embeddings), or alone."""
    if refine_template is None:
        base.referenced_objects = [*keep, *(getattr(base, "referenced_objects", None) or [])]
        return base
    if isinstance(faiss.downcast_index(refine_template), faiss.IndexFlat):
        refine = flat_from(fill, n, dim)
    else:
        refine = refine_template
        vectors = np.empty((n, dim), dtype=np.float32)
        fill(vectors)
        refine.add(vectors)
        del vectors
    index = faiss.IndexRefine(base, refine)
    index.referenced_objects = [base, refine, *keep]
    return index


def persistable(trained: faiss.Index) -> bool:
    """True when the searchable part of ``trained`` that the shards' codes fill is inverted lists
    alone (:func:`filled_base`): an IVF base (its refine step, if any, is filled from the
    embeddings), or a projected chain over one without an in-RAM re-rank store."""
    index = faiss.downcast_index(trained)
    if is_projected(index):
        _, base, refine = chain_levels(index)
        return refine is None and mergeable(base)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    return mergeable(index)


def filled_base(trained: faiss.Index, shard_files: list[Path], first: int = 0) -> faiss.Index:
    """What :func:`persistable` ``trained`` searches through its lists — the whole projected chain,
    or the IVF base — filled with the codes of ``shard_files`` (ids from ``first`` on)."""
    if is_projected(trained):
        index = faiss.clone_index(trained)
        _, base, _ = chain_levels(index)
    else:
        index = parts(trained)[0]  # the owning copy: returned, so that the lists stay alive
        base = faiss.downcast_index(index)
    runs, _ = _code_runs(shard_files, int(base.sa_code_size()), int(first))
    fill_ivf(base, runs)
    if is_projected(trained):
        faiss.downcast_index(index.index).ntotal = base.ntotal
    index.ntotal = base.ntotal
    return index


def mapped_base(trained: faiss.Index, path: Path, tail_files: list[Path]) -> faiss.Index:
    """The persisted :func:`filled_base` in ``path``, its inverted lists memory-mapped
    (``IO_FLAG_MMAP_IFC``: FAISS reads the small parts and points each list's codes and ids into
    the mapped file, so opening does not grow with the items); with ``tail_files`` (the shards
    committed after it was written) their codes fill a second copy of the base, and both are
    searched as one (``IndexShards``: the same coarse quantiser, so the same lists probed, and
    each item's own id; answers merged by score)."""
    mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    if not tail_files:
        return mapped
    tail = filled_base(trained, tail_files, int(mapped.ntotal))
    both = faiss.IndexShards(int(mapped.d), False, False)  # not threaded; the ids are the items' own
    both.metric_type = mapped.metric_type
    both.add_shard(mapped)
    both.add_shard(tail)
    both.referenced_objects = [mapped, tail]
    return both


def covered_lists(manifest: dict) -> dict | None:
    """The manifest's ``lists`` record when it still describes the index: written with its
    trained file, over shards whose codes are the committed ones (a compaction or retraining since
    changes them: the record is then ignored, and the codes are filled as without it)."""
    record = manifest.get("lists")
    trained = manifest.get("trained") or {}
    if not record or record.get("trained") != trained.get("file"):
        return None
    shards = manifest.get("shards") or []
    count = int(record.get("shards", -1))
    if not 0 < count <= len(shards) or any(not s.get("faiss") for s in shards[:count]):
        return None
    if sum(int(s["items"]) for s in shards[:count]) != int(record.get("items", -1)) or codes_digest(shards[:count]) != record.get("codes"):
        return None
    return record


def codes_digest(shards: list[dict]) -> str:
    """sha256 over the committed codes files of ``shards`` (their recorded sha256s, in order)."""
    import hashlib

    return hashlib.sha256("\n".join(s["faiss"]["sha256"] for s in shards).encode()).hexdigest()


def combine_chain(trained: faiss.Index, shard_files: list[Path], n: int) -> faiss.Index:
    """The searchable projected chain: a copy of ``trained`` whose base and re-rank store get
    each shard's codes (``.codes.npy``: base code then store code per row), no embedding read
    (the shards' embeddings stay on disk). Both are sized once and filled in place
    (:func:`fill_ivf`, :func:`fill_flat_codes`): adding millions of codes one entry at a time
    grows FAISS's vectors by reallocation, and the freed buffers stay in the process (RSS per
    image: benchmarks/RESULTS.md, ``scale_10m``)."""
    index = faiss.clone_index(trained)
    _, base, refine = chain_levels(index)
    if not shard_files or not all(p.name.endswith(".codes.npy") for p in shard_files):
        raise ValueError("a projected chain needs every shard's codes (.codes.npy)")
    width = base.sa_code_size()
    full = width + (refine.sa_code_size() if refine is not None else 0)
    parts, lo = _code_runs(shard_files, full)
    if lo != n:
        raise ValueError(f"shard codes hold {lo} rows, expected {n}")
    if isinstance(base, faiss.IndexIVF) and isinstance(faiss.downcast_InvertedLists(base.invlists), faiss.ArrayInvertedLists):
        fill_ivf(base, [(codes[:, :width], first) for codes, first in parts])
    else:
        for codes, first in parts:
            base.add_sa_codes(np.ascontiguousarray(codes[:, :width]), np.arange(first, first + len(codes), dtype=np.int64))
    if refine is not None:
        fill_flat_codes(refine, [codes[:, width:] for codes, _ in parts], n)
    inner = faiss.downcast_index(index.index)
    inner.ntotal = n
    index.ntotal = n
    return index


def list_numbers(codes: np.ndarray, width: int) -> np.ndarray:
    """IVF list of each row of standalone codes (their first ``width`` bytes, little-endian)."""
    lists = np.zeros(len(codes), dtype=np.int64)
    for b in range(width):
        lists |= codes[:, b].astype(np.int64) << (8 * b)
    return lists


def fill_ivf(ivf: faiss.IndexIVF, parts: list[tuple[np.ndarray, int]]) -> None:
    """Add standalone codes (coarse list number, then the code) of runs of consecutive ids
    (``(codes, first id)``) to an IVF index: every list is sized once to its final length and
    written in place. Same lists, same order within each list, as ``add_sa_codes``.

    The codes are first gathered list by list into one arena (per part: a stable sort by list
    and one scatter), then each list gets its run with one copy: the Python work is one step per
    part and one per list, not one per (part, list) pair — which grew as shards × lists."""
    lists_of = faiss.downcast_InvertedLists(ivf.invlists)
    coarse, size, nlist = int(ivf.coarse_code_size()), int(ivf.code_size), int(ivf.nlist)
    numbers = [list_numbers(codes, coarse) for codes, _ in parts]
    counts = np.zeros(nlist, dtype=np.int64)
    for lists in numbers:
        counts += np.bincount(lists, minlength=nlist)[:nlist]
    total = int(counts.sum())
    starts = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    width = coarse + size
    # whole rows as one opaque element each: numpy then moves a row with one copy, not byte by byte
    arena_rows = np.empty(total, dtype=f"V{width}")
    arena_ids = np.empty(total, dtype=np.int64)
    cursor = starts[:-1].copy()
    key = np.uint16 if nlist <= 1 << 16 else np.int64  # a radix sort for 16-bit list numbers
    for (codes, first), lists in zip(parts, numbers):
        keep = lists < nlist  # a damaged list number is dropped (the item count then fails the open)
        order = np.argsort(lists.astype(key, copy=False) if keep.all() else np.where(keep, lists, nlist).astype(np.int64), kind="stable")
        order = order[: int(keep.sum())]
        ordered = lists[order]
        part_counts = np.bincount(ordered, minlength=nlist)[:nlist]
        part_starts = np.zeros(nlist, dtype=np.int64)
        np.cumsum(part_counts[:-1], out=part_starts[1:])
        dest = cursor[ordered] + (np.arange(len(order), dtype=np.int64) - part_starts[ordered])
        rows = np.ascontiguousarray(codes).view(f"V{width}").reshape(-1)
        if len(order) == len(rows):  # each row scattered to its place: one pass over the codes
            where = np.empty(len(rows), dtype=np.int64)
            where[order] = dest
            arena_rows[where] = rows
        else:
            arena_rows[dest] = rows[order]
        arena_ids[dest] = first + order
        cursor += part_counts
    arena_codes = arena_rows.view(np.uint8).reshape(total, width)[:, coarse:]
    for lst in np.nonzero(counts)[0]:
        lst = int(lst)
        had = int(lists_of.list_size(lst))
        n = int(counts[lst])
        lists_of.resize(lst, had + n)
        code_view = faiss.rev_swig_ptr(lists_of.get_codes(lst), (had + n) * size)
        id_view = faiss.rev_swig_ptr(lists_of.get_ids(lst), had + n)
        lo, hi = int(starts[lst]), int(starts[lst + 1])
        code_view.reshape(had + n, size)[had:] = arena_codes[lo:hi]
        id_view[had:] = arena_ids[lo:hi]
    ivf.ntotal = int(ivf.ntotal + total)


def fill_flat_codes(index: faiss.Index, parts: list[np.ndarray], n: int) -> None:
    """Put ``n`` rows of codes (in ``parts``, in order) into an empty flat-codes index (the SQ
    re-rank store), its buffer sized once."""
    index = faiss.downcast_index(index)
    width = int(index.sa_code_size())
    if not isinstance(index, faiss.IndexFlatCodes) or index.ntotal:
        for codes in parts:
            index.add_sa_codes(np.ascontiguousarray(codes), None)
        return
    index.codes.resize(n * width)
    view = faiss.rev_swig_ptr(index.codes.data(), n * width).reshape(n, width)
    at = 0
    for codes in parts:
        view[at:at + len(codes)] = codes  # one copy, straight from the (strided) codes
        at += len(codes)
    index.ntotal = n
