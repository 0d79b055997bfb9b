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

This module chooses and trains specs; the other jobs live in their own modules, re-exported
here: :mod:`.faiss_spec` (factory-string helpers), :mod:`.faiss_files` (per-shard parts and
combining them at open), :mod:`.faiss_gpu` (GPU copies) and :mod:`.faiss_params` (search
parameters).
"""

from __future__ import annotations

import faiss
import numpy as np

from medcbir.errors import ConfigError
from medcbir.indexer.faiss_files import (chain_codes, chain_levels, codes_digest, combine, combine_chain,  # noqa: F401 - re-exported
                                         covered_lists, fill_flat_codes, fill_ivf, filled_base, flat_from, mapped_base,
                                         mergeable, parts, persistable,
                                         read_codes, shard_index,
                                         uses_codes, write_index, write_shard_part)
from medcbir.indexer.faiss_gpu import GPU_PQ_CODE_SIZES, apply_gpu_params, gpu_copy, gpu_movable  # noqa: F401 - re-exported
from medcbir.indexer.faiss_params import (AUTO_SEARCH_PARAMS, apply_search_params, default_search_params,  # noqa: F401 - re-exported
                                          search_parameters)
from medcbir.indexer.compression import fit_projection
from medcbir.indexer.faiss_spec import (FLAT_SPECS, SHARDS_RERANK, faiss_part, is_flat, reranks_from_shards,  # noqa: F401 - re-exported
                                        split_projection, split_refine, try_extract_ivf)

_try_extract_ivf = try_extract_ivf

#: ``auto`` uses exact search below this many items (see the module docstring for why).
AUTO_FLAT_MAX = 65_536
#: Trained parameters are fitted on at least this many committed embeddings (all of them when
#: fewer), more when the coarse quantiser needs them (:func:`train_sample`).
TRAIN_SAMPLE = 100_000
#: Inverted lists of ``auto``'s IVF specs up to :data:`AUTO_NLIST` ² / 16 items (1,024 lists up
#: to 65,536 items); beyond, the lists grow with the archive (:func:`auto_nlist`).
AUTO_NLIST = 1024
#: Most inverted lists ``auto`` trains: k-means over ``nlist`` centroids and 39 points each costs
#: ∝ nlist², the bound on training time (and RAM: 39 × nlist training vectors).
AUTO_NLIST_MAX = 8192
#: FAISS's minimum of training points per centroid.
POINTS_PER_LIST = 39
#: sample items ``auto`` holds out as queries when it chooses (``recall.QUERIES``), on top of
#: the training points
HELD_OUT = 200


def auto_nlist(n: int | None = None, sample: int | None = None) -> int:
    """Inverted lists of ``auto``'s IVF specs for an index of ``n`` items: :data:`AUTO_NLIST` at
    :data:`AUTO_FLAT_MAX` items (where ``auto`` leaves exact search), growing with √n beyond (the
    power of two nearest ``AUTO_NLIST`` · √(n / AUTO_FLAT_MAX): 4·√n with the defaults, FAISS's
    rule of thumb is 4–16·√n), at most :data:`AUTO_NLIST_MAX`; fewer when ``n`` (or a training
    ``sample`` of that many) cannot give each centroid :data:`POINTS_PER_LIST` points. Growing
    with √n keeps the items one probed list holds ∝ √n instead of ∝ n."""
    if n is None:
        return AUTO_NLIST
    n = int(n)
    steps = round(0.5 * np.log2(n / AUTO_FLAT_MAX)) if n > AUTO_FLAT_MAX else 0
    nlist = min(max(AUTO_NLIST, AUTO_NLIST_MAX), AUTO_NLIST * 2 ** max(0, int(steps)))
    return max(1, min(nlist, n // POINTS_PER_LIST, int(sample if sample is not None else n) // POINTS_PER_LIST))


def train_sample(n: int) -> int:
    """Training vectors for an index of ``n`` items: :data:`TRAIN_SAMPLE`, or
    :data:`POINTS_PER_LIST` per list of :func:`auto_nlist` (plus the :data:`HELD_OUT` queries)
    when that is more (bounded by :data:`AUTO_NLIST_MAX` lists); never more than ``n``."""
    lists = auto_nlist(n, sample=n)
    return int(min(int(n), max(TRAIN_SAMPLE, POINTS_PER_LIST * lists + HELD_OUT)))


def auto_spec(dim: int, nlist: int | None = None) -> str:
    """The first approximate spec ``auto`` tries above :data:`AUTO_FLAT_MAX` items (IVF-PQ)."""
    # one byte per ~8 dimensions: the largest divisor of dim not above dim / 8 (512 → PQ64; the
    # classic descriptor's 2020 → PQ202, where the old power-of-two list gave PQ4, four bytes)
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    return f"IVF{nlist or AUTO_NLIST},PQ{m},Refine(Flat)"


def validate_spec(spec: str, dim: int) -> str:
    """Check a user's factory string by building it; returns it stripped.

    Raises:
        ConfigError: FAISS cannot build it.
    """
    spec = spec.strip()
    if spec == "auto" or is_flat(spec):
        return spec
    projected, rest = split_projection(faiss_part(spec))
    if projected is not None and not 0 < projected < int(dim):
        raise ConfigError(f"--index-spec {spec!r}: PCAU{projected} must project {dim}-d vectors to fewer dimensions")
    if reranks_from_shards(spec) and is_flat(rest):
        raise ConfigError(f"--index-spec {spec!r}: re-ranking an exact index from the shards re-scores nothing; use Flat")
    try:
        faiss.index_factory(int(projected or dim), rest, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError with a C++ message
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--index-spec {spec!r} is not a FAISS factory string for {dim}-d vectors ({first})") from None
    return spec


def needs_training(spec: str, dim: int) -> bool:
    spec = faiss_part(spec)
    if is_flat(spec):
        return False
    if split_projection(spec)[0] is not None:
        return True  # the projection is learnt
    return not faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT).is_trained


def min_train_items(spec: str, dim: int) -> int:
    """Fewest training points FAISS accepts for ``spec`` (centroids of IVF / 2^nbits of PQ)."""
    projected, spec = split_projection(faiss_part(spec))
    index = faiss.index_factory(int(projected or dim), split_refine(spec)[0], faiss.METRIC_INNER_PRODUCT)
    need = 1
    ivf = try_extract_ivf(index)
    if ivf is not None:
        need = max(need, int(ivf.nlist))
    pq = getattr(faiss.downcast_index(ivf if ivf is not None else index), "pq", None)
    if pq is not None:
        need = max(need, 1 << int(pq.nbits))
    return need


def train(spec: str, dim: int, sample: np.ndarray) -> faiss.Index:
    """The factory index for ``spec`` trained on ``sample`` (empty: no vectors added); a spec
    behind a ``PCAU{d}`` projection is an ``IndexPreTransform`` of the projection learnt from
    ``sample`` (:func:`~medcbir.indexer.compression.fit_projection`) and the rest trained on the
    projected sample. A ``Refine(Shards)`` step is not FAISS's: the base alone is trained (the
    re-rank reads the shards, :mod:`medcbir.indexer.rerank`)."""
    projected, rest = split_projection(faiss_part(spec))
    if projected is not None:
        projection = fit_projection(sample, projected)
        return chain(projection, train(rest, projected, projection.apply(np.ascontiguousarray(sample, dtype=np.float32))))
    index = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
    _no_polysemous(index)
    _bounded_kmeans(index)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


#: k-means iterations of a coarse quantiser above :data:`AUTO_NLIST` lists (FAISS's default, 25,
#: below): the training time of grown lists stays bounded
GROWN_NITER = 10


def _bounded_kmeans(index: faiss.Index) -> None:
    """Fewer k-means iterations (:data:`GROWN_NITER`) for a coarse quantiser of more than
    :data:`AUTO_NLIST` lists: its cost is ∝ nlist × sample × iterations."""
    ivf = try_extract_ivf(index)
    if ivf is not None and int(ivf.nlist) > AUTO_NLIST:
        ivf.cp.niter = min(int(ivf.cp.niter), GROWN_NITER)


def chain(projection: faiss.VectorTransform, inner: faiss.Index) -> faiss.IndexPreTransform:
    """``inner`` (trained on projected vectors) behind ``projection``, one index searched with
    full-dimension queries."""
    out = faiss.IndexPreTransform(projection, inner)
    out.referenced_objects = [projection, inner]
    return out


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
