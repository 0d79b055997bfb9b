"""Centring / whitening of embeddings (medcbir.train.postprocess), checked against numpy by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medcbir.train.postprocess import EmbeddingPostprocess


def cone(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.ones(dim) + 0.05 * rng.standard_normal((n, dim)) * np.linspace(2, 0.2, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_centring_subtracts_the_training_mean_then_normalises():
    x = cone(500)
    post = EmbeddingPostprocess.fit(x)
    y = post.apply(x[:10])
    by_hand = x[:10] - x.mean(0)
    by_hand /= np.linalg.norm(by_hand, axis=1, keepdims=True)
    np.testing.assert_allclose(y, by_hand, atol=1e-5)
    # the cone is spread: mean pairwise cosine drops from ~1 to ~0
    assert (x @ x.T).mean() > 0.99 and abs(float((post.apply(x) @ post.apply(x).T).mean())) < 0.05
    np.testing.assert_allclose(post.apply(x[3]), y[3], atol=1e-6)  # one embedding as a D-vector


def test_whitening_gives_identity_covariance_and_round_trips():
    x = cone(2000, seed=1)
    post = EmbeddingPostprocess.fit(x, whiten=True)
    z = (x - post.mean) @ post.whitening
    np.testing.assert_allclose(np.cov(z.T), np.eye(z.shape[1]), atol=2e-2)
    again = EmbeddingPostprocess.from_dict(post.to_dict())
    np.testing.assert_allclose(again.apply(x[:5]), post.apply(x[:5]), atol=1e-6)
    assert again.fingerprint == post.fingerprint != EmbeddingPostprocess.fit(x).fingerprint
    tampered = post.to_dict()
    tampered["mean"][0] += 0.1
    with pytest.raises(ValueError, match="fingerprint"):
        EmbeddingPostprocess.from_dict(tampered)
