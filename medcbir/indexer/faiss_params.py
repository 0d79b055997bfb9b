"""Search parameters of a FAISS index: defaults per spec, the parameter object carrying knobs and
an id selector to the level that scans codes, and knobs set on the index object."""

from __future__ import annotations

import faiss

from medcbir.indexer.faiss_spec import is_flat, split_refine, try_extract_ivf
from medcbir.indexer.rerank import RerankFromRows

#: Search defaults of the auto spec. On clustered, low-intrinsic-dimension embeddings at 1M×512
#: (benchmarks/RESULTS.md "search") recall@10 depends on the re-rank depth, not on nprobe ≥ 4;
#: nprobe 8 keeps a margin over 4 for less clustered real archives at a higher QPS than 16.
AUTO_SEARCH_PARAMS = {"nprobe": 8, "k_factor": 16}


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
    - ``IndexRefine`` (and :class:`~medcbir.indexer.rerank.RerankFromRows`, the re-rank from the
      shards): ``IndexRefineSearchParameters`` (``k_factor``), the selector going to
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


def _refine_params(index, knobs: dict, sel, keep: list) -> faiss.IndexRefineSearchParameters:
    """Parameters of a refine step (FAISS's ``IndexRefine`` or medcbir's re-rank from the shards):
    its ``k_factor``, and its base index's parameters (selector, probes) inside."""
    out = faiss.IndexRefineSearchParameters()
    out.k_factor = float(knobs.get("k_factor") or index.k_factor)
    base = _params(index.base_index, knobs, sel, keep)
    if base is not None:
        keep.append(base)
        out.base_index_params = base
    return out


def _params(index: faiss.Index, knobs: dict, sel, keep: list):
    if isinstance(index, RerankFromRows):
        return _refine_params(index, knobs, sel, keep)
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
        return _refine_params(index, knobs, sel, keep)
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
    if not isinstance(index, RerankFromRows):
        index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexRefine, RerankFromRows)):
        if "k_factor" in params:
            index.k_factor = float(params["k_factor"])
        apply_search_params(index.base_index, params)
        return
    if isinstance(index, faiss.IndexShards):
        for i in range(index.count()):
            apply_search_params(index.at(i), params)
        return
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexPreTransform)):
        apply_search_params(index.index, params)
        return
    ivf = try_extract_ivf(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None and "efSearch" in params:
        hnsw.efSearch = int(params["efSearch"])
