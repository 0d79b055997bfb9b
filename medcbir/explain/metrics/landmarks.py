"""Landmark clustering quality of saliency maps (after Zhang et al.'s landmark-based evaluation).

Landmarks are the local maxima of a saliency map (peaks of a ``2·min_distance+1`` maximum
filter, strongest first). Each landmark is described by the encoder's feature-layer vector at its
position; the landmarks of a set of images are grouped with K-means into ``n_clusters``, and

    S    silhouette (Rousseeuw 1987): mean over landmarks of (b − a) / max(a, b), a = mean
         distance to its own cluster, b = mean distance to the nearest other cluster;
    D_C  compactness: mean Euclidean distance of a landmark's feature to its cluster centre;
    D_U  uniqueness: mean Euclidean distance between pairs of cluster centres.

Good explanations point at few, consistent structures: high S, low D_C, high D_U.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from medcbir.errors import ConfigError
from medcbir.explain.metrics._common import as_map


def local_maxima(heatmap, n: int = 5, min_distance: int = 3) -> np.ndarray:
    """Up to ``n`` local maxima of ``heatmap`` as (row, col) int array, strongest first.

    Args:
        heatmap: H×W relevance.
        n: maximum number of landmarks.
        min_distance: half-size of the neighbourhood a peak must dominate.
    """
    heat = as_map(heatmap)
    peak = (heat == ndimage.maximum_filter(heat, size=2 * min_distance + 1, mode="nearest")) & (heat > heat.min())
    rows, cols = np.nonzero(peak)
    order = np.argsort(-heat[rows, cols], kind="stable")[:n]
    return np.stack([rows[order], cols[order]], axis=1)


def landmark_features(heatmaps, features, n: int = 5, min_distance: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors at each map's landmarks.

    Args:
        heatmaps: B×H×W saliency maps.
        features: B×K×h×w feature-layer activations (sampled at the nearest cell).
        n: landmarks per map.
        min_distance: see :func:`local_maxima`.

    Returns:
        (L×K features, L image indices).
    """
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    vectors, owners = [], []
    for i, heat in enumerate(heatmaps):
        heat = as_map(heat)
        h, w = heat.shape
        fh, fw = feats.shape[-2:]
        for r, c in local_maxima(heat, n, min_distance):
            vectors.append(feats[i, :, min(fh - 1, r * fh // h), min(fw - 1, c * fw // w)])
            owners.append(i)
    if not vectors:
        return np.zeros((0, feats.shape[1])), np.zeros(0, dtype=int)
    return np.asarray(vectors, dtype=np.float64), np.asarray(owners)


def cluster_quality(points: np.ndarray, labels: np.ndarray) -> dict:
    """S, D_C and D_U for points (L×K) and their cluster labels."""
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    clusters = np.unique(labels)
    centres = np.stack([points[labels == c].mean(0) for c in clusters])
    compact = float(np.mean(np.linalg.norm(points - centres[np.searchsorted(clusters, labels)], axis=1)))
    if len(clusters) > 1:
        d = np.linalg.norm(centres[:, None] - centres[None], axis=2)
        unique = float(d[np.triu_indices(len(clusters), 1)].mean())
    else:
        unique = 0.0
    ok = 1 < len(clusters) < len(points)
    sil = float(silhouette_score(points, labels)) if ok else float("nan")
    return {"silhouette": sil, "compactness": compact, "uniqueness": unique}


def landmark_scores(heatmaps, features, n_landmarks: int = 5, n_clusters: int = 3, min_distance: int = 3, seed: int = 0) -> dict:
    """Landmark S / D_C / D_U over a set of saliency maps.

    Args:
        heatmaps: B×H×W saliency maps.
        features: B×K×h×w feature-layer activations of the same images.
        n_landmarks: landmarks per map.
        n_clusters: K-means clusters.
        min_distance: peak neighbourhood half-size.
        seed: K-means seed.
    """
    points, _ = landmark_features(heatmaps, features, n_landmarks, min_distance)
    if len(points) <= n_clusters:
        raise ConfigError(f"{len(points)} landmarks are too few for {n_clusters} clusters")
    with warnings.catch_warnings():
        # identical landmark features (e.g. dead feature cells) give fewer distinct clusters
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        labels = KMeans(n_clusters=n_clusters, n_init=5, random_state=seed).fit_predict(points)
    return {**cluster_quality(points, labels), "n_landmarks": int(len(points))}
