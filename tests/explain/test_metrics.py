"""Each explanation metric equals a hand computation on a small case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain.metrics import (
    average_drop_increase,
    cluster_quality,
    deletion_auc,
    dice,
    dice_rotation_sweep,
    insertion_auc,
    landmark_scores,
    local_maxima,
    localisation_auprc,
    perturbation_curve,
    pointing_game,
    pointwise_localisation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_area,
)

HEAT = np.array([[9, 1, 2], [8, 3, 0], [7, 4, 5]], dtype=float)


def test_relevance_rank_accuracy():
    left = np.zeros((3, 3))
    left[:, 0] = 1  # the three largest values 9, 8, 7
    top = np.zeros((3, 3))
    top[0] = 1  # holds 9 only among the top three
    assert relevance_rank_accuracy(HEAT, left) == 1.0
    assert relevance_rank_accuracy(HEAT, top) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError):
        relevance_rank_accuracy(HEAT, np.zeros((3, 3)))
    with pytest.raises(ConfigError):
        relevance_rank_accuracy(HEAT, np.ones((2, 2)))


def test_relevance_mass_accuracy():
    heat = np.array([[1.0, -2.0], [3.0, 4.0]])
    mask = np.array([[1, 1], [0, 0]])
    # positive mass 1 + 0 + 3 + 4 = 8, inside 1 + 0
    assert relevance_mass_accuracy(heat, mask) == pytest.approx(1 / 8)
    assert relevance_mass_accuracy(-np.ones((2, 2)), mask) == 0.0


def test_pointing_game():
    heat = np.zeros((5, 5))
    heat[2, 2] = 1
    mask = np.zeros((5, 5))
    mask[2, 0] = 1
    assert pointing_game(heat, mask) == 0.0
    assert pointing_game(heat, mask, tolerance=1) == 0.0  # distance 2
    assert pointing_game(heat, mask, tolerance=2) == 1.0
    mask[2, 2] = 1
    assert pointing_game(heat, mask) == 1.0


def test_localisation_auprc():
    heat = np.array([[0.9, 0.8], [0.7, 0.1]])
    mask = np.array([[1, 0], [1, 0]])
    # thresholds 0.9: P=1 R=1/2; 0.8: P=1/2; 0.7: P=2/3 R=1 → AP = 1/2·1 + 1/2·2/3
    assert localisation_auprc(heat, mask) == pytest.approx(0.5 + 0.5 * 2 / 3)
    tied = np.array([[0.9, 0.5], [0.5, 0.1]])
    mask2 = np.array([[1, 1], [0, 0]])
    # the two 0.5 pixels enter together: P=2/3 at R=1
    assert localisation_auprc(tied, mask2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    rng = np.random.default_rng(0)
    h, m = rng.random((8, 8)), rng.random((8, 8)) > 0.6
    assert localisation_auprc(h, m) == pytest.approx(average_precision_score(m.ravel(), h.ravel()))


def test_local_maxima_and_pointwise_localisation():
    heat = np.zeros((12, 12))
    heat[2, 2], heat[9, 9], heat[2, 9] = 5.0, 3.0, 4.0
    peaks = local_maxima(heat, n=5, min_distance=2)
    assert peaks.tolist() == [[2, 2], [2, 9], [9, 9]]
    mask = np.zeros((12, 12))
    mask[:5, :] = 1  # holds the peaks at (2,2) and (2,9)
    assert pointwise_localisation(heat, mask, n=3, min_distance=2) == pytest.approx(2 / 3)
    assert pointwise_localisation(heat, mask, n=1, min_distance=2) == 1.0


def test_cluster_quality_by_hand():
    points = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], dtype=float)
    labels = np.array([0, 0, 1, 1])
    q = cluster_quality(points, labels)
    # a = 2 (own cluster), b = (10 + √104)/2 for every point
    b = (10 + math.sqrt(104)) / 2
    assert q["silhouette"] == pytest.approx((b - 2) / b)
    assert q["compactness"] == pytest.approx(1.0)  # every point is 1 from its centre
    assert q["uniqueness"] == pytest.approx(10.0)  # centres (0,1) and (10,1)


def test_landmark_scores_separate_structures():
    # two images, peaks at two structures whose features are clearly distinct
    heat = np.zeros((2, 8, 8))
    heat[:, 1, 1], heat[:, 6, 6] = 2.0, 1.0
    feats = np.zeros((2, 3, 8, 8))
    feats[:, 0, 1, 1], feats[:, 1, 6, 6] = 1.0, 1.0
    out = landmark_scores(heat, feats, n_landmarks=2, n_clusters=2, min_distance=2)
    assert out["n_landmarks"] == 4
    assert out["silhouette"] == pytest.approx(1.0)
    assert out["compactness"] == pytest.approx(0.0)
    assert out["uniqueness"] == pytest.approx(math.sqrt(2))


def test_dice_and_top_area():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[0, 1, 1, 1]], bool)
    assert dice(a, b) == pytest.approx(2 * 1 / 5)
    assert top_area(np.array([[0.1, 0.9, 0.5, 0.9]]), 2).tolist() == [[False, True, False, True]]


def _image_method(encoder, images, targets=None):
    return images[:, 0]


def _fixed_method(fixed):
    def method(encoder, images, targets=None):
        return fixed.expand(images.shape[0], -1, -1)

    return method


def test_dice_rotation_sweep():
    mask = torch.zeros(16, 16)
    mask[2:6, 3:9] = 1
    angles = [0, 90, 180, 270]
    following = dice_rotation_sweep(_image_method, None, mask[None], mask, angles=angles)
    assert following["dice"] == pytest.approx([1.0] * 4)
    # a map stuck to the frame: right at 0°, disjoint from the rotated organ otherwise
    stuck = dice_rotation_sweep(_fixed_method(mask), None, mask[None], mask, angles=angles)
    assert stuck["dice"] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert stuck["mean"] == pytest.approx(0.25)


class FlatEncoder(nn.Module):
    """Embedding = the L2-normalised flattened image: cosines are computable by hand."""

    def forward(self, x):
        return F.normalize(x.flatten(1), dim=1)


def _cos(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def test_deletion_curve_and_auc_by_hand():
    image = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    heat = np.array([[0.1, 0.9], [0.5, 0.2]])  # order: (0,1), (1,0), (1,1), (0,0)
    target = torch.tensor([1.0, 1.0, 1.0, 1.0])
    curve = perturbation_curve(FlatEncoder(), image, heat, target, "deletion", steps=4)
    x = np.array([4.0, 3.0, 2.0, 1.0])
    expected = []
    for deleted in ([], [1], [1, 2], [1, 2, 3], [0, 1, 2, 3]):
        y = x.copy()
        y[deleted] = 0
        expected.append(_cos(y, np.ones(4)) if y.any() else 0.0)
    np.testing.assert_allclose(curve, expected, atol=1e-6)
    auc = sum((expected[i] + expected[i + 1]) / 2 for i in range(4)) / 4
    assert deletion_auc(FlatEncoder(), image, heat, target, steps=4) == pytest.approx(auc, abs=1e-6)


def test_insertion_starts_blurred_and_ends_at_the_image():
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    heat = np.random.default_rng(0).random((8, 8))
    curve = perturbation_curve(FlatEncoder(), image, heat, None, "insertion", steps=8)
    assert curve[-1] == pytest.approx(1.0, abs=1e-6)  # the full image against its own embedding
    assert curve[0] < 1.0
    assert insertion_auc(FlatEncoder(), image, heat, None, steps=8) == pytest.approx(
        sum((curve[i] + curve[i + 1]) / 2 for i in range(8)) / 8, abs=1e-6
    )


def test_average_drop_and_increase_by_hand():
    images = torch.tensor([[[[3.0, 4.0]]], [[[3.0, 4.0]]]])
    heat = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # keeps the first pixel only
    targets = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = average_drop_increase(FlatEncoder(), images, heat, targets)
    # image 1: Y = 1, O = cos([3,0],[3,4]) = 0.6 → drop 0.4; image 2: Y = 0.6, O = 1 → increase
    assert out["confidence"] == pytest.approx([1.0, 0.6])
    assert out["explained_confidence"] == pytest.approx([0.6, 1.0])
    assert out["adc"] == pytest.approx(100 * (0.4 + 0.0) / 2)
    assert out["pic"] == pytest.approx(50.0)
