"""FAISS ID selectors and the search parameters that carry them through composite indexes.

Filters and tombstones are applied *inside* FAISS (an ``IDSelectorBitmap`` over the item-id
range), never by fetching more neighbours and dropping some: a query then gets exactly K
admissible neighbours however selective the filter is.

The search-parameter objects that carry a selector to the index level that scans codes are
built by :func:`medcbir.indexer.faiss_index.search_parameters` (one implementation, shared
with the indexer's recall measurement and the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass
class Selection:
    """A set of admissible item ids as a FAISS selector, with the buffers it points into.

    FAISS selectors hold raw pointers; ``keep`` holds the numpy arrays and sub-selectors they
    point to so that nothing is garbage-collected while a search runs.

    Args:
        mask: boolean mask over the id range ``0..len(mask)-1`` (True = admissible).
    """

    mask: np.ndarray
    selector: faiss.IDSelector = field(init=False)
    keep: list = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        # packbits(bitorder="little") puts id i at bit (i & 7) of byte (i >> 3): the layout
        # IDSelectorBitmap reads.
        bitmap = np.packbits(self.mask.astype(bool, copy=False), bitorder="little")
        self.keep.append(bitmap)
        self.selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.mask))


def is_exact(index: faiss.Index) -> bool:
    """Whether ``index`` returns exact neighbours (a flat index, possibly wrapped in an id map)."""
    if not isinstance(index, faiss.Index):
        return False  # medcbir's re-rank from the shards over an approximate base
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return is_exact(index.index)
    return isinstance(index, faiss.IndexFlat)


#: largest k a FAISS GPU index accepts (k-selection in GPU registers; larger k throws).
GPU_MAX_K = 2048


@dataclass(frozen=True)
class Route:
    """Where one group of queries is searched.

    Attributes:
        path: ``"gpu"`` or ``"cpu"``.
        fetch: neighbours asked of the index (more than k on the GPU when filtering: GPU
            indexes ignore ID selectors, so admissible ones are kept on the host afterwards).
        reason: why (shown by ``Engine.last_route``).
    """

    path: str
    fetch: int
    reason: str


def route(k: int, *, gpu: bool, admissible: float | None, n_items: int, k_factor: float = 1.0) -> Route:
    """Choose GPU or CPU for a search of ``k`` neighbours.

    Args:
        k: neighbours wanted.
        gpu: a GPU copy of the index exists.
        admissible: fraction of items passing the filters/tombstones (None = no filter).
        n_items: items in the index.
        k_factor: re-rank depth of a refine step (the GPU base then returns k × k_factor).

    A filtered search on the GPU over-fetches (twice the expected number of candidates needed
    to find k admissible ones) and filters on the host; rows that still have fewer than k are
    re-searched on the CPU with the selector (:meth:`Engine.search_groups`), so filters,
    exclusions and deletions are never dropped.
    """
    if not gpu:
        return Route("cpu", k, "cpu: no GPU copy of this index")
    fetch = k
    if admissible is not None:
        if admissible <= 0:
            return Route("cpu", k, "cpu: no admissible item")
        fetch = min(n_items, int(np.ceil(2 * k / admissible)) + k)
    if fetch * max(1.0, float(k_factor)) > GPU_MAX_K:
        return Route("cpu", k, f"cpu: {fetch} × k_factor {k_factor:g} exceeds the GPU limit k ≤ {GPU_MAX_K}")
    return Route("gpu", fetch, "gpu" if admissible is None else f"gpu: top {fetch}, filtered on the host")


def keep_admissible(scores: np.ndarray, ids: np.ndarray, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``k`` admissible results of each row (``mask`` over the id range).

    Returns:
        (scores B×k, ids B×k padded with -inf/-1, short: rows with fewer than k admissible).
    """
    ok = ids >= 0
    ok[ok] = mask[ids[ok]]
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    short = np.zeros(len(ids), dtype=bool)
    for r in range(len(ids)):
        cols = np.flatnonzero(ok[r])[:k]
        out_s[r, : len(cols)], out_i[r, : len(cols)] = scores[r, cols], ids[r, cols]
        short[r] = len(cols) < k
    return out_s, out_i, short
