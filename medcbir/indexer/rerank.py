"""Exact re-rank from stored rows: a FAISS base index whose candidates are re-scored with the
full-dimension embeddings read on demand (from the memory-mapped HDF5 shards at search time, from
an in-RAM array while ``auto`` measures), instead of from an in-RAM ``Refine(...)`` store.

The spec names it ``…,Refine(Shards)`` (e.g. ``PCAU256,IVF1024,SQ8,Refine(Shards)``): FAISS holds
only the base (projection, coarse lists, codes: a few hundred bytes per item), and each query's
``k × k_factor`` candidates by approximate score are ranked by their exact inner product with the
stored embedding — the scores an exact search over the stored vectors gives. The object answers
``search(x, k, params)`` like a FAISS index (``params``: an ``IndexRefineSearchParameters``, its
``base_index_params`` carrying ``nprobe`` and the id selector of filters and tombstones to the
base), so the engine, the recall measurements and the sharded actors search it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

#: floats gathered per re-rank step (queries × candidates × dimension): bounds the temporary
#: buffer of a large batch
GATHER_FLOATS = 1 << 24


class RerankFromRows:
    """``base`` (a trained FAISS index holding every item under its id) whose top ``k × k_factor``
    candidates are re-ranked exactly with ``rows_of(ids)`` (float32 ``len(ids) × d``, rows in the
    order of the sorted unique ``ids`` given)."""

    def __init__(self, base: faiss.Index, rows_of: Callable[[np.ndarray], np.ndarray], k_factor: float = 1.0,
                 scores_of: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        self.base_index = base
        self.rows_of = rows_of
        #: ``scores_of(queries, which, ids)``: the exact inner products of ``queries[which[i]]``
        #: with the stored row of ``ids[i]``, when the rows can be scored without being decoded
        #: (transform-coded shards score in their codebook's rotated space); else ``rows_of``
        self.scores_of = scores_of
        self.k_factor = float(k_factor)
        self.d = int(base.d)
        self.metric_type = faiss.METRIC_INNER_PRODUCT
        self.is_trained = True

    @property
    def ntotal(self) -> int:
        return int(self.base_index.ntotal)

    def search(self, x: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores B×k, ids B×k) best first, -inf / -1 where fewer than ``k`` candidates exist."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        k = int(k)
        factor = self.k_factor if params is None else float(params.k_factor or self.k_factor)
        base_params = None if params is None else params.base_index_params
        depth = max(k, int(k * factor))
        _, candidates = (self.base_index.search(x, depth, params=base_params) if base_params is not None
                         else self.base_index.search(x, depth))
        scores = np.full((len(x), k), -np.inf, dtype=np.float32)
        ids = np.full((len(x), k), -1, dtype=np.int64)
        step = max(1, GATHER_FLOATS // max(1, depth * self.d))
        for lo in range(0, len(x), step):
            hi = min(len(x), lo + step)
            scores[lo:hi], ids[lo:hi] = self._rerank(x[lo:hi], candidates[lo:hi], k)
        return scores, ids

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = cand >= 0
        exact = np.full(cand.shape, -np.inf, dtype=np.float32)
        if found.any():
            rows = np.nonzero(found)[0]
            if self.scores_of is not None:
                exact[found] = self.scores_of(q, rows, cand[found])
            else:
                unique, inverse = np.unique(cand[found], return_inverse=True)
                stored = self.rows_of(unique)
                exact[found] = np.einsum("ij,ij->i", stored[inverse], q[rows], dtype=np.float32)
        width = min(k, cand.shape[1])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :width]
        top = np.take_along_axis(exact, order, axis=1)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(q), k), -1, dtype=np.int64)
        out_s[:, :width] = top
        out_i[:, :width] = np.where(np.isfinite(top), np.take_along_axis(cand, order, axis=1), -1)
        return out_s, out_i


def from_array(base: faiss.Index, vectors: np.ndarray, k_factor: float = 1.0) -> RerankFromRows:
    """A :class:`RerankFromRows` whose rows are ``vectors`` (row = id), kept referenced."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return RerankFromRows(base, lambda ids: vectors[ids], k_factor)
