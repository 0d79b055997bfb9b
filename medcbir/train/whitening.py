"""Linear maps fitted to an archive's embeddings: centring, PCA-whitening with shrinkage, learned whitening.

The classic adaptation of a retrieval descriptor to a collection (Jégou & Chum 2012; Radenović
et al. 2018), in numpy, on the frozen encoder's L2-normalised embeddings ``x``:

- **centring**: ``x − μ`` (μ the archive's mean embedding): the direction every image shares
  stops dominating the cosine;
- **PCA-whitening with shrinkage**: ``diag(λ + s·mean(λ))^(-1/2) · Vᵀ (x − μ)``, the top ``dim``
  principal directions, each rescaled towards unit variance. The shrinkage ``s`` keeps the weak
  directions (mostly noise) from being blown up as far as the strong ones: ``s = 0`` is plain
  whitening, large ``s`` tends to a plain PCA projection;
- **learned whitening** (Radenović et al.'s *Lw*): whitening by the covariance of the differences
  of *positive pairs* (two images of the same anatomy), then a rotation to the principal directions
  of the data so whitened: the directions in which positives differ (acquisition, patient) are
  shrunk, those that tell anatomy apart kept. It is a linear head fitted in closed form to the
  self-supervised positives (:mod:`medcbir.train.positives`).

Every fit returns a :class:`LinearMap` ``y = W x + b``, which :mod:`medcbir.train.adapt` puts on
top of the encoder as a :class:`~medcbir.encoders.projection.ProjectedBackbone`.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(200, 16))
    >>> m = fit_pca_whitening(x, dim=4, shrinkage=0.0)
    >>> y = (x - x.mean(0)) @ m.weight.T
    >>> bool(np.allclose(np.cov(y.T), np.eye(4), atol=1e-6))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcbir.errors import ConfigError

#: the relative eigenvalue below which a direction is taken as not spanned by the sample
RANK_EPS = 1e-9


@dataclass(frozen=True)
class LinearMap:
    """``y = weight · x + bias`` (``weight`` dim_out × dim_in), then L2-normalised.

    Attributes:
        weight: dim_out × dim_in.
        bias: dim_out.
        kind: ``centre``, ``whiten`` or ``learned-whiten``.
        params: what was fitted (dimension, shrinkage, pairs), for the record.
    """

    weight: np.ndarray
    bias: np.ndarray
    kind: str
    params: dict

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """N×dim_in → N×dim_out float32, each row of unit norm (zero rows stay zero)."""
        y = np.asarray(x, dtype=np.float64) @ self.weight.T + self.bias
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return np.divide(y, norms, out=np.zeros_like(y), where=norms > 0).astype(np.float32)


def principal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, eigenvalues descending, eigenvectors as columns) of the sample covariance, spanned directions only.

    From the SVD of the centred sample (the cheaper side of N×D), so a few hundred embeddings of
    a 2,020-d descriptor cost a fraction of a second.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        raise ConfigError(f"fitting a whitening needs at least 3 embeddings, got {len(x)}")
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    values = singular**2 / (len(x) - 1)
    keep = values > RANK_EPS * max(float(values[0]), 1e-30)
    return mean, values[keep], vt[keep].T


def fit_centring(x: np.ndarray) -> LinearMap:
    """Subtract the mean embedding."""
    x = np.asarray(x, dtype=np.float64)
    return LinearMap(np.eye(x.shape[1]), -x.mean(axis=0), "centre", {})


def fit_pca_whitening(x: np.ndarray, dim: int, shrinkage: float = 1.0, components=None) -> LinearMap:
    """PCA-whitening to ``dim`` directions with eigenvalue shrinkage ``s`` (module docstring).

    ``dim`` is clipped to the directions the sample spans; ``components`` is :func:`principal`
    of ``x`` when already computed (several dimensions fitted to one sample).
    """
    mean, values, vectors = components if components is not None else principal(x)
    dim = int(min(dim, len(values)))
    scale = 1.0 / np.sqrt(values[:dim] + float(shrinkage) * values.mean())
    weight = (vectors[:, :dim] * scale).T
    return LinearMap(weight, -weight @ mean, "whiten", {"dim": dim, "shrinkage": float(shrinkage)})


def fit_learned_whitening(x: np.ndarray, differences: np.ndarray, dim: int, shrinkage: float = 1.0, reduce: int = 256,
                          components=None) -> LinearMap:
    """Learned whitening from the differences of positive pairs (Radenović et al.'s *Lw*).

    Args:
        x: N×D embeddings of the archive (the data the rotation is fitted to).
        differences: P×D differences ``x_i − x_j`` of positive pairs.
        dim: output dimension.
        shrinkage: added to the pairs' covariance, in units of its mean eigenvalue (stabilises
            directions the pairs barely sample).
        reduce: the data is first projected on its top ``reduce`` principal directions (the pairs'
            covariance is estimated there: fewer pairs than dimensions otherwise).
        components: :func:`principal` of ``x`` when already computed.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) < 2:
        raise ConfigError(f"learned whitening needs positive pairs; got {len(differences)}")
    mean, _, vectors = components if components is not None else principal(x)
    basis = vectors[:, : int(min(reduce, vectors.shape[1]))]
    d = differences @ basis
    within = d.T @ d / len(d)
    within += float(shrinkage) * np.trace(within) / len(within) * np.eye(len(within))
    w_values, w_vectors = np.linalg.eigh(within)
    inverse_sqrt = (w_vectors / np.sqrt(w_values)) @ w_vectors.T
    z = (np.asarray(x, dtype=np.float64) - mean) @ basis @ inverse_sqrt
    _, r_values, rotation = principal(z)
    dim = int(min(dim, len(r_values)))
    weight = (basis @ inverse_sqrt @ rotation[:, :dim]).T
    params = {"dim": dim, "shrinkage": float(shrinkage), "pairs": int(len(differences)), "reduce": int(basis.shape[1])}
    return LinearMap(weight, -weight @ mean, "learned-whiten", params)
