"""Ablation-CAM of a similarity score (Desai & Ramaswamy, WACV 2020).

For each channel k of the last conv block A: w_k = (S − S_k) / S, where S is the similarity to
the target and S_k the similarity with channel k zeroed; map = ReLU(Σ_k w_k A_k), upsampled.
All channel ablations of an image run through the encoder's head in batches (the trunk up to the
feature layer runs once per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.explain.base import ablated_scores, capture_features, check_images, evaluating, resolve_targets


def cam_from_weights(features: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU(Σ_k w_k A_k) for B×K×h×w features and B×K weights, upsampled to ``size``."""
    cam = F.relu(torch.einsum("bk,bkhw->bhw", weights, features))
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].contiguous()


def ablation_cam(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """B×H×W Ablation-CAM maps.

    Args:
        encoder: an encoder with ``.feature_layer``.
        images: B×C×H×W.
        targets: B×D targets, ``None`` = own embeddings.
        batch_size: channel ablations per head forward.
    """
    images = check_images(images)
    with evaluating(encoder):
        tgt = resolve_targets(encoder, images, targets)
        emb, feats = capture_features(encoder, images)
        s = F.cosine_similarity(emb, tgt, dim=1)
        k = feats.shape[1]
        keep = 1.0 - torch.eye(k)
        s_abl = ablated_scores(encoder, images, tgt, keep, batch_size=batch_size)
    weights = (s[:, None] - s_abl) / s[:, None].abs().clamp_min(1e-8)
    return cam_from_weights(feats, weights, tuple(images.shape[-2:]))
