"""Input handling shared by the explanation metrics."""

from __future__ import annotations

import numpy as np
import torch

from medcbir.errors import ConfigError


def as_map(x, name: str = "heatmap") -> np.ndarray:
    """A 2-D float64 numpy array from a tensor or array (H×W)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ConfigError(f"{name} must be H×W, got shape {a.shape}")
    return a


def as_mask(x, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A 2-D boolean mask, checked against ``shape``."""
    m = as_map(x, "mask") > 0
    if shape is not None and m.shape != tuple(shape):
        raise ConfigError(f"mask shape {m.shape} differs from the heatmap's {tuple(shape)}")
    if not m.any():
        raise ConfigError("mask is empty")
    return m


def descending_order(heat: np.ndarray) -> np.ndarray:
    """Flat pixel indices by decreasing relevance; ties keep raster order (stable)."""
    return np.argsort(-heat.ravel(), kind="stable")
