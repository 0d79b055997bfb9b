"""Factory-string helpers every FAISS module shares: exact specs, the refine step, the IVF level."""

from __future__ import annotations

import re

import faiss

_REFINE = re.compile(r"^(?P<base>.+?),\s*Refine\((?P<refine>.+)\)$")
FLAT_SPECS = {"flat", "idmap,flat", "idmap2,flat"}


def is_flat(spec: str) -> bool:
    return spec.replace(" ", "").lower() in FLAT_SPECS


def split_refine(spec: str) -> tuple[str, str | None]:
    """``"IVF1024,PQ64,Refine(Flat)"`` → ``("IVF1024,PQ64", "Flat")``."""
    match = _REFINE.match(spec.strip())
    if match:
        return match["base"].strip(), match["refine"].strip()
    return spec.strip(), None


def try_extract_ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except Exception:  # noqa: BLE001 - not an IVF index
        return None


_PROJECTION = re.compile(r"^PCAU(?P<dim>\d+)\s*,\s*(?P<rest>.+)$", re.I)


def split_projection(spec: str) -> tuple[int | None, str]:
    """``"PCAU256,IVF1024,SQ8,Refine(SQfp16)"`` → ``(256, "IVF1024,SQ8,Refine(SQfp16)")``; a spec
    without the projection prefix → ``(None, spec)``. ``PCAU{d}`` is medcbir's own step (not a FAISS
    factory token): the uncentred PCA to ``d`` dimensions (:mod:`medcbir.indexer.compression`)."""
    match = _PROJECTION.match(spec.strip())
    if match:
        return int(match["dim"]), match["rest"].strip()
    return None, spec.strip()


def is_projected(index: faiss.Index) -> bool:
    """True for a chain behind a learned projection (an ``IndexPreTransform``)."""
    return isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)


#: the re-rank step of a chain that re-scores its candidates with the embeddings stored in the
#: HDF5 shards (memory-mapped) instead of an in-RAM store: ``…,Refine(Shards)``
SHARDS_RERANK = "Shards"


def reranks_from_shards(spec: str) -> bool:
    """True for a spec whose re-rank step reads the shards (``…,Refine(Shards)``)."""
    refine = split_refine(spec)[1]
    return refine is not None and refine.replace(" ", "").lower() == SHARDS_RERANK.lower()


def faiss_part(spec: str) -> str:
    """What FAISS builds and trains of ``spec``: the spec without a ``Refine(Shards)`` step (the
    re-rank from the shards is medcbir's, :mod:`medcbir.indexer.rerank`)."""
    return split_refine(spec)[0] if reranks_from_shards(spec) else spec.strip()
