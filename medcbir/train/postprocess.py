"""Embedding post-processing: centring (and optional whitening) before L2-normalisation.

A randomly initialised or lightly trained encoder puts every image of one archive in a narrow
cone (pairwise cosine 0.98–1.0 for the default encoder on the phantom): the shared mean
direction dominates each embedding, cosine similarity mostly measures it, and product
quantisation cannot resolve the tiny remaining differences. Subtracting the archive's mean
embedding (fitted once, on the training sample) and re-normalising spreads the cone over the
sphere; whitening additionally rescales the principal directions to unit variance.

The transform is part of the model: its parameters are stored (``to_dict``) and must be applied
identically to stored and query embeddings; :attr:`fingerprint` identifies them.

Example:
    >>> post = EmbeddingPostprocess.fit(train_embeddings)
    >>> post.apply(train_embeddings).shape == train_embeddings.shape
    True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingPostprocess:
    """Centre (and optionally whiten), then L2-normalise embeddings.

    Args:
        mean: D-vector subtracted from every embedding (the training sample's mean).
        whitening: D×D' matrix applied after centring (None = centring only).
    """

    mean: np.ndarray
    whitening: np.ndarray | None = None

    @classmethod
    def fit(cls, embeddings: np.ndarray, whiten: bool = False, eps: float = 1e-6) -> "EmbeddingPostprocess":
        """Fit the mean (and a PCA whitening, ``whiten=True``) on N×D training embeddings."""
        x = np.asarray(embeddings, dtype=np.float64)
        mean = x.mean(axis=0)
        whitening = None
        if whiten:
            w, v = np.linalg.eigh(np.cov((x - mean).T))
            keep = w > eps * w.max()  # directions the sample does not span stay out
            whitening = (v[:, keep] / np.sqrt(w[keep])).astype(np.float32)
        return cls(mean.astype(np.float32), whitening)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """N×D (or D) embeddings → centred [whitened] L2-normalised float32."""
        x = np.asarray(embeddings, dtype=np.float32)
        single = x.ndim == 1
        x = np.atleast_2d(x) - self.mean
        if self.whitening is not None:
            x = x @ self.whitening
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        return x[0] if single else x

    @property
    def dim(self) -> int:
        return int(self.whitening.shape[1]) if self.whitening is not None else int(self.mean.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 of the parameters (goes beside the encoder's fingerprint)."""
        h = hashlib.sha256(np.ascontiguousarray(self.mean, dtype=np.float32).tobytes())
        if self.whitening is not None:
            h.update(np.ascontiguousarray(self.whitening, dtype=np.float32).tobytes())
        return h.hexdigest()

    def to_dict(self) -> dict:
        return {
            "kind": "centre+whiten" if self.whitening is not None else "centre",
            "mean": self.mean.astype(float).tolist(),
            "whitening": None if self.whitening is None else self.whitening.astype(float).tolist(),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "EmbeddingPostprocess":
        """Inverse of :meth:`to_dict`; refuses parameters whose fingerprint does not match."""
        post = cls(np.asarray(data["mean"], dtype=np.float32),
                   None if data.get("whitening") is None else np.asarray(data["whitening"], dtype=np.float32))
        if data.get("fingerprint") and data["fingerprint"] != post.fingerprint:
            raise ValueError("embedding post-processing parameters do not match their fingerprint")
        return post
