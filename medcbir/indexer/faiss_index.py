"""FAISS side of an index: choosing the spec, training once, per-shard files, combining at open.

The FAISS factory string is the one way to name an index (``--index-spec``). ``auto`` means:

- **exact** ``Flat`` (``IndexFlatIP``) while the index holds fewer than
  :data:`AUTO_FLAT_MAX` items, and
- above it ``IVF{nlist},PQ{D/8},Refine(Flat)``: an inverted file with 8-bit product-quantised
  codes whose candidates (``k_factor`` × k of them) are re-ranked with the exact embeddings.

Why the threshold is :data:`AUTO_FLAT_MAX` = 65,536 items (docs/indexer.md "Index specs";
figures in benchmarks/RESULTS.md ``index`` and ``search``): exact search grows linearly with the
items, and below the threshold a single query stays fast enough, is exact, needs no training
and no per-shard FAISS files. Above it the IVF-PQ index with re-ranking answers in under a
millisecond at high recall on clustered embeddings, and 65k items are enough to train 1,024
centroids (≥ 39 points each, FAISS's own rule of thumb) and the 256-entry PQ codebooks.

Why 8-bit PQ and not the ``x4fs`` fast-scan variant: FAISS 1.15's ``merge_from`` corrupts the
heap on fast-scan inverted lists, so per-shard fast-scan files cannot be merged; a user may
still ask for a fast-scan spec, which is then combined with ``IndexShards`` (correct, slower).
HNSW is not ``auto``'s first choice: on clustered embeddings its recall@10 stayed below IVF-PQ's
with re-ranking (benchmarks/RESULTS.md, "Development measurements").

Storage: trained parameters (the empty, trained factory index) live in ``trained-G.faiss``,
trained once on a sample of up to :data:`TRAIN_SAMPLE` committed embeddings and re-used for
every later shard. Each shard ``shard-N.h5`` gets its FAISS part committed next to it:
for IVF bases ``shard-N.codes.npy``, the shard's FAISS standalone codes (``sa_encode``: coarse
list + PQ/flat/SQ code), all added at open with one ``add_sa_codes`` call (identical to adding
the vectors; much faster to open than merging per-shard index files); for other bases (HNSW,
PQ, fast-scan IVF) ``shard-N.faiss``, a whole index of the shard's vectors under their ids
(``IndexIDMap2``), combined with ``IndexShards``. ``Flat`` needs no FAISS files at all: the
exact index is filled straight from the shards' embeddings at open (one read into FAISS's own
buffer, no Python objects, no second copy); a ``Refine(...)`` step is filled the same way.
Ids are dense positions (0..N-1 in shard order), which is what ``IndexRefine`` needs.

GPU (:func:`gpu_copy`): the CPU index stays the one source of truth; when ``device.faiss_gpu``
a GPU copy is made of what FAISS can run on a GPU — a flat index, an IVF base (under a refine
step the base goes to the GPU and the re-rank stays on the CPU). HNSW, ``IndexShards`` and
fast-scan bases cannot move (``index_cpu_to_gpu`` throws for them): those indexes search on the
CPU. GPU indexes ignore ID selectors and take k ≤ 2048, and a GPU IVF reads ``nprobe`` from the
index object, not from search parameters: the engine routes each search accordingly
(``medcbir.engine.selectors.route``). Untested on a GPU here (no GPU on this machine):
``scripts/gpu_check.py`` compares CPU and GPU answers on a CUDA machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from medcbir.errors import ConfigError
from medcbir.indexer.fsutil import commit_file, sha256_file, tmp_name

#: ``auto`` uses exact search below this many items (see the module docstring for why).
AUTO_FLAT_MAX = 65_536
#: Trained parameters are fitted on at most this many committed embeddings.
TRAIN_SAMPLE = 100_000
AUTO_NLIST = 1024
#: Search defaults of the auto spec. On clustered, low-intrinsic-dimension embeddings at 1M×512
#: (benchmarks/RESULTS.md "search") recall@10 depends on the re-rank depth, not on nprobe ≥ 4;
#: nprobe 8 keeps a margin over 4 for less clustered real archives at a higher QPS than 16.
AUTO_SEARCH_PARAMS = {"nprobe": 8, "k_factor": 16}

_REFINE = re.compile(r"^(?P<base>.+?),\s*Refine\((?P<refine>.+)\)$")
FLAT_SPECS = {"flat", "idmap,flat", "idmap2,flat"}


def is_flat(spec: str) -> bool:
    return spec.replace(" ", "").lower() in FLAT_SPECS


def auto_nlist(n: int | None = None) -> int:
    """Inverted lists of ``auto``'s IVF specs: :data:`AUTO_NLIST`, fewer when ``n`` items
    cannot give each centroid FAISS's minimum of 39 training points."""
    if n is None:
        return AUTO_NLIST
    return max(1, min(AUTO_NLIST, int(n) // 39))


def auto_spec(dim: int, nlist: int | None = None) -> str:
    """The first approximate spec ``auto`` tries above :data:`AUTO_FLAT_MAX` items (IVF-PQ)."""
    # one byte per ~8 dimensions: the largest divisor of dim not above dim / 8 (512 → PQ64; the
    # classic descriptor's 2020 → PQ202, where the old power-of-two list gave PQ4, four bytes)
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    return f"IVF{nlist or AUTO_NLIST},PQ{m},Refine(Flat)"


def split_refine(spec: str) -> tuple[str, str | None]:
    """``"IVF1024,PQ64,Refine(Flat)"`` → ``("IVF1024,PQ64", "Flat")``."""
    match = _REFINE.match(spec.strip())
    if match:
        return match["base"].strip(), match["refine"].strip()
    return spec.strip(), None


def validate_spec(spec: str, dim: int) -> str:
    """Check a user's factory string by building it; returns it stripped.

    Raises:
        ConfigError: FAISS cannot build it.
    """
    spec = spec.strip()
    if spec == "auto" or is_flat(spec):
        return spec
    try:
        faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError with a C++ message
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--index-spec {spec!r} is not a FAISS factory string for {dim}-d vectors ({first})") from None
    return spec


def needs_training(spec: str, dim: int) -> bool:
    if is_flat(spec):
        return False
    return not faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT).is_trained


def min_train_items(spec: str, dim: int) -> int:
    """Fewest training points FAISS accepts for ``spec`` (centroids of IVF / 2^nbits of PQ)."""
    index = faiss.index_factory(int(dim), split_refine(spec)[0], faiss.METRIC_INNER_PRODUCT)
    need = 1
    ivf = _try_extract_ivf(index)
    if ivf is not None:
        need = max(need, int(ivf.nlist))
    pq = getattr(faiss.downcast_index(ivf if ivf is not None else index), "pq", None)
    if pq is not None:
        need = max(need, 1 << int(pq.nbits))
    return need


def train(spec: str, dim: int, sample: np.ndarray) -> faiss.Index:
    """The factory index for ``spec`` trained on ``sample`` (empty: no vectors added)."""
    index = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
    _no_polysemous(index)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def _no_polysemous(index: faiss.Index) -> None:
    """Skip PQ's polysemous training: it multiplies the training time (benchmarks/RESULTS.md,
    "Development measurements") for a Hamming pre-filter that medcbir's searches never use."""
    index = faiss.downcast_index(index)
    for attr in ("base_index", "refine_index", "index"):
        sub = getattr(index, attr, None)
        if isinstance(sub, faiss.Index):
            _no_polysemous(sub)
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False


def shared_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF level of ``index`` when its coarse centroids can be given instead of trained:
    a plain IVF base (possibly under a refine step, no pre-transform) with a flat quantiser."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    if isinstance(index, faiss.IndexIVF) and isinstance(faiss.downcast_index(index.quantizer), faiss.IndexFlat):
        return index
    return None


def _try_extract_ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except Exception:  # noqa: BLE001 - not an IVF index
        return None


def parts(trained: faiss.Index) -> tuple[faiss.Index, faiss.Index | None]:
    """(base, refine) templates of a trained factory index, each an independent empty copy."""
    index = faiss.downcast_index(trained)
    if isinstance(index, faiss.IndexRefine):
        return faiss.clone_index(index.base_index), faiss.clone_index(index.refine_index)
    return faiss.clone_index(index), None


def mergeable(base: faiss.Index) -> bool:
    """IVF bases merge with ``merge_from``; fast-scan IVF does not (heap corruption in 1.15)."""
    base = faiss.downcast_index(base)
    return isinstance(base, faiss.IndexIVF) and not isinstance(base, faiss.IndexIVFFastScan)


def uses_codes(base: faiss.Index) -> bool:
    """True when a shard's part of ``base`` is stored as FAISS standalone codes (``sa_encode``).

    For IVF indexes (not fast-scan) each shard file is then an ``.npy`` of N × ``sa_code_size``
    bytes (coarse list number + the list's code), and opening adds all shards' codes with a
    single ``add_sa_codes`` call: much faster than ``merge_from`` of per-shard FAISS files
    (profiled at 1M items, the ``merge_from`` calls were the largest part of opening).
    """
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
        with open(tmp, "wb") as fh:
            np.save(fh, base_template.sa_encode(embeddings), allow_pickle=False)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        commit_file(tmp, path, hook="faiss-fsync")
        return {"file": path.name, "bytes": size, "sha256": digest, "kind": "sa_codes"}
    path = stem.with_name(stem.name + ".faiss")
    size, digest = write_index(shard_index(base_template, ids, embeddings), path)
    return {"file": path.name, "bytes": size, "sha256": digest, "kind": "faiss"}


def read_codes(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def shard_index(base_template: faiss.Index, ids: np.ndarray, embeddings: np.ndarray) -> faiss.Index:
    """A copy of the trained base holding one shard's vectors under their ids."""
    base = faiss.clone_index(base_template)
    if _try_extract_ivf(base) is None:
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
) -> tuple[faiss.Index, bool]:
    """The searchable index of all committed items.

    Args:
        trained: the trained factory index (None for Flat or not yet trained: exact search).
        shard_files: per-shard FAISS files in shard order (ignored for Flat).
        fill: writes all N×D embeddings, in id order, into the array it is given.
        n: number of committed items.
        dim: embedding dimension.
        faiss_gpu: ignored (kept for callers): the GPU copy is made by :func:`gpu_copy`.

    Returns:
        (index, exact): ``exact`` is True for brute-force search.
    """
    if trained is None:
        return flat_from(fill, n, dim), True
    base_template, refine_template = parts(trained)
    keep: list = []
    if shard_files and all(p.name.endswith(".codes.npy") for p in shard_files):
        base = base_template
        codes = np.concatenate([read_codes(p) for p in shard_files]) if len(shard_files) > 1 else np.asarray(read_codes(shard_files[0]))
        if codes.shape != (n, base.sa_code_size()):
            raise ValueError(f"shard codes hold {codes.shape}, expected ({n}, {base.sa_code_size()})")
        base.add_sa_codes(codes, np.arange(n, dtype=np.int64))
        del codes
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
    if refine_template is None:
        base.referenced_objects = keep
        return base, False
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
    return index, False


def gpu_movable(index: faiss.Index) -> bool:
    """Whether FAISS can copy ``index`` to a GPU: flat, and IVF-Flat/-PQ/-SQ (not fast-scan);
    not HNSW, ``IndexShards``, ``IndexIDMap`` wrappers or bare PQ (FAISS throws for those)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return True
    if isinstance(index, faiss.IndexIVFPQ) and index.pq.code_size not in GPU_PQ_CODE_SIZES:
        return False
    return isinstance(index, (faiss.IndexIVFFlat, faiss.IndexIVFPQ, faiss.IndexIVFScalarQuantizer)) and not isinstance(index, faiss.IndexIVFFastScan)


#: bytes per IVF-PQ code FAISS's GPU index supports (others search on the CPU)
GPU_PQ_CODE_SIZES = frozenset((1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96))


def gpu_copy(index: faiss.Index, to_gpu: Callable | None = None) -> tuple[faiss.Index | None, str]:
    """A GPU copy of the searchable part of ``index``, or None, with the reason.

    Args:
        index: the combined CPU index (kept: filtered searches that cannot run on the GPU
            fall back to it).
        to_gpu: the copier (default ``faiss.index_cpu_to_all_gpus``).

    Returns:
        (gpu_index or None, which path runs and why).
    """
    cpu = faiss.downcast_index(index)
    refine = isinstance(cpu, faiss.IndexRefine)
    base = faiss.downcast_index(cpu.base_index) if refine else cpu
    if not gpu_movable(base):
        return None, f"cpu: {type(base).__name__} cannot run on a GPU"
    to_gpu = to_gpu or faiss.index_cpu_to_all_gpus  # pragma: no cover - default needs a GPU
    moved = to_gpu(base)
    if not refine:
        return moved, f"gpu: {type(base).__name__}"
    out = faiss.IndexRefine(moved, cpu.refine_index)
    out.k_factor = cpu.k_factor
    out.own_fields = False
    out.referenced_objects = [moved, cpu]
    return out, f"gpu: {type(base).__name__} on the GPU, exact re-rank on the CPU"


def apply_gpu_params(index: faiss.Index, params: dict) -> None:
    """Search knobs on a GPU copy: a GPU IVF reads ``nprobe`` from the index object (it does not
    take ``SearchParametersIVF`` like the CPU one), the re-rank depth lives on the refine wrapper."""
    inner = faiss.downcast_index(index) if isinstance(index, faiss.Index) else index
    if isinstance(inner, faiss.IndexRefine):
        if "k_factor" in params:
            inner.k_factor = float(params["k_factor"])
        inner = faiss.downcast_index(inner.base_index)
    if "nprobe" in params and hasattr(faiss, "GpuParameterSpace"):  # pragma: no cover - GPU build only
        try:
            faiss.GpuParameterSpace().set_index_parameter(inner, "nprobe", int(params["nprobe"]))
            return
        except RuntimeError:
            pass
    if "nprobe" in params and hasattr(inner, "nprobe"):
        inner.nprobe = int(params["nprobe"])


def default_search_params(spec: str, auto: bool = False) -> dict:
    """Search defaults for ``spec`` (``auto``: the measured :data:`AUTO_SEARCH_PARAMS`)."""
    if is_flat(spec):
        return {}
    if auto:
        return dict(AUTO_SEARCH_PARAMS)
    params: dict = {}
    base, refine = split_refine(spec)
    if base.upper().startswith("IVF") or ",IVF" in base.upper():
        params["nprobe"] = AUTO_SEARCH_PARAMS["nprobe"]
    if "HNSW" in base.upper():
        params["efSearch"] = 128
    if refine is not None:
        params["k_factor"] = AUTO_SEARCH_PARAMS["k_factor"]
    return params


def search_parameters(index: faiss.Index, params: dict | None = None, sel: faiss.IDSelector | None = None, keep: list | None = None):
    """The search-parameter object for ``index`` with ``params`` (``nprobe``, ``efSearch``,
    ``k_factor``) and an optional id selector carried to the level that scans codes, or None
    when there is nothing to set (no selector, no knob the index has).

    FAISS only honours a selector given in the parameters of the index level that scans codes,
    so this walks the composition (the one implementation, for the indexer's recall measurement,
    the store and the engine's filtered searches):

    - ``IndexIDMap``/``IndexIDMap2``: FAISS translates the selector to the sub-index's sequential
      ids itself, except under a refine step, where it is translated here (``IDSelectorTranslated``);
    - ``IndexRefine``: ``IndexRefineSearchParameters`` (``k_factor``), the selector going to
      ``base_index_params`` (the refine step only re-scores candidates the base already filtered);
    - ``IndexIVF*``: ``SearchParametersIVF`` (also carrying ``nprobe``);
    - ``IndexHNSW*``: ``SearchParametersHNSW`` (also carrying ``efSearch``);
    - ``IndexPreTransform``, ``IndexShards``: the sub-index's parameters, passed through unchanged
      (the shards of an ``IndexShards`` share one type);
    - anything else (flat, PQ, LSH...): plain ``SearchParameters`` with the selector.

    Args:
        index: the FAISS index that will be searched.
        params: knobs; absent ones keep the index's own values.
        sel: admissible ids, or None for all.
        keep: a list that receives every object FAISS will point to (the returned object also
            references them; keep either alive during the search).
    """
    keep = keep if keep is not None else []
    out = _params(index, dict(params or {}), sel, keep)
    if out is not None:
        out.referenced_objects = [*keep, sel]
    return out


def _params(index: faiss.Index, knobs: dict, sel, keep: list):
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner_index = faiss.downcast_index(index.index)
        inner = sel
        if sel is not None and isinstance(inner_index, faiss.IndexRefine):
            # IndexIDMap translates the top-level selector itself, but a refine step reads its
            # selector from base_index_params, which IndexIDMap does not touch: translate here
            # (IndexIDMap leaves an already translated selector alone).
            inner = faiss.IDSelectorTranslated(index.id_map, sel)
            keep.append(inner)
        return _params(inner_index, knobs, inner, keep)
    if isinstance(index, faiss.IndexShards):
        if index.count() == 0:
            return _plain(sel)
        return _params(index.at(0), knobs, sel, keep)
    if isinstance(index, faiss.IndexRefine):
        out = faiss.IndexRefineSearchParameters()
        out.k_factor = float(knobs.get("k_factor") or index.k_factor)
        base = _params(index.base_index, knobs, sel, keep)
        if base is not None:
            keep.append(base)
            out.base_index_params = base
        return out
    if isinstance(index, faiss.IndexPreTransform):
        # IndexPreTransform hands parameters that are not its own straight to its sub-index.
        return _params(index.index, knobs, sel, keep)
    if isinstance(index, faiss.IndexIVF):
        out = faiss.SearchParametersIVF()
        out.nprobe = int(knobs.get("nprobe") or index.nprobe)
    elif isinstance(index, faiss.IndexHNSW):
        out = faiss.SearchParametersHNSW()
        out.efSearch = int(knobs.get("efSearch") or index.hnsw.efSearch)
    else:
        return _plain(sel)
    if sel is not None:
        out.sel = sel
    return out


def _plain(sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
    if sel is None:
        return None
    out = faiss.SearchParameters()
    out.sel = sel
    return out


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Set defaults (nprobe, k_factor, efSearch) on the index object itself."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        if "k_factor" in params:
            index.k_factor = float(params["k_factor"])
        apply_search_params(index.base_index, params)
        return
    if isinstance(index, faiss.IndexShards):
        for i in range(index.count()):
            apply_search_params(index.at(i), params)
        return
    if isinstance(index, faiss.IndexIDMap2) or isinstance(index, faiss.IndexIDMap):
        apply_search_params(index.index, params)
        return
    ivf = _try_extract_ivf(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None and "efSearch" in params:
        hnsw.efSearch = int(params["efSearch"])
