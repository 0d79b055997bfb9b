"""GPU copies of a combined FAISS index and the search knobs they read (see
:mod:`medcbir.indexer.faiss_index`, "GPU")."""

from __future__ import annotations

from collections.abc import Callable

import faiss


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
