"""Retrieval metrics on ranked neighbour labels, defined exactly (numpy, no engine needed).

Every function takes ``relevant``: a Q×K boolean matrix, ``relevant[q, j]`` = the (j+1)-th
neighbour of query q has the query's label. A missing neighbour (fewer than K admissible
items) counts as not relevant; denominators stay K.

Example:
    >>> rel = np.array([[True, False, True]])
    >>> precision_at_k(rel)            # 2/3
    array([0.66666667])
    >>> map_at_k(rel)                  # (1/1 + 1/2 + 2/3) / 3
    array([0.72222222])
    >>> ap_at_k(rel, n_relevant=np.array([5]))   # (1/1 + 2/3) / min(3, 5)
    array([0.55555556])
"""

from __future__ import annotations

import numpy as np


def precision_curve(relevant: np.ndarray) -> np.ndarray:
    """P@k for k = 1..K: Q×K, ``cumsum(relevant) / k``."""
    relevant = np.asarray(relevant, dtype=np.float64)
    return np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)


def precision_at_k(relevant: np.ndarray) -> np.ndarray:
    """Per query: relevant neighbours among the K, divided by K."""
    relevant = np.asarray(relevant, dtype=np.float64)
    return relevant.sum(axis=1) / relevant.shape[1]


def map_at_k(relevant: np.ndarray) -> np.ndarray:
    """Per query, "reference-paper style" MAP@K: the mean over k = 1..K of P@k.

    Averaged over queries this is the ``map_at_k`` that CBIR papers on medical images report
    (it rewards relevant items early without needing the number of relevant items).
    """
    return precision_curve(relevant).mean(axis=1)


def ap_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per query, standard IR average precision at K.

    ``AP@K = Σ_k P@k · rel_k / min(K, R)`` where R is the number of items relevant to the
    query in the searchable set (after exclusions). The ``min(K, R)`` denominator makes a
    perfect top-K score 1 even when R > K (the TREC/``trec_eval``-at-cutoff convention);
    a query with R = 0 scores 0.

    Args:
        relevant: Q×K relevance.
        n_relevant: R per query (length Q).
    """
    relevant = np.asarray(relevant, dtype=np.float64)
    k = relevant.shape[1]
    gains = (precision_curve(relevant) * relevant).sum(axis=1)
    denom = np.minimum(k, np.asarray(n_relevant, dtype=np.float64))
    return np.divide(gains, denom, out=np.zeros_like(gains), where=denom > 0)


def knn_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label of each row's neighbours (label codes ≥ 0; -1 = no neighbour).

    A tie goes to the tied label whose best-ranked neighbour ranks highest (appears first);
    a row without neighbours predicts -1.
    """
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    out = np.full(len(labels), -1, dtype=np.int64)
    for q, row in enumerate(labels):
        row = row[row >= 0]
        if not len(row):
            continue
        values, first, counts = np.unique(row, return_index=True, return_counts=True)
        top = counts == counts.max()
        out[q] = values[top][np.argmin(first[top])]
    return out
