"""Sanity checks (Adebayo et al. 2018) and trivial maps behave as their definitions say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcbir.explain import gradcam
from medcbir.explain.sanity import cascade_stages, map_agreement, parametrised_layers, randomised_copy, sanity_checks
from medcbir.explain.trivial_maps import TRIVIAL_MAPS
from tests.explain.toys import SmallConvEncoder, blob_images

S = 32


@pytest.fixture(scope="module")
def small():
    return SmallConvEncoder(seed=2).eval(), blob_images(4, S, seed=3)


def test_gradcam_maps_change_when_the_encoder_is_randomised(small):
    encoder, images = small
    out = sanity_checks(gradcam, encoder, images, seed=0, data_steps=20)
    stages = [p["layers"] for p in out["parameter"]]
    assert stages == cascade_stages(len(parametrised_layers(encoder))) == [1, 2, 4]
    full = out["parameter"][-1]
    assert full["spearman"] < 0.3 and full["ssim"] < 0.4, full
    assert out["data"]["spearman"] < 0.3, out["data"]
    # cascading: the more layers are randomised, the less the maps agree
    rhos = [p["spearman"] for p in out["parameter"]]
    assert rhos[0] > rhos[-1]
    assert not out["flagged"]


def test_sanity_checks_are_deterministic_for_a_seed(small):
    encoder, images = small
    before = [p.clone() for p in encoder.parameters()]
    a = sanity_checks(gradcam, encoder, images, seed=4, data_steps=5)
    b = sanity_checks(gradcam, encoder, images, seed=4, data_steps=5)
    c = sanity_checks(gradcam, encoder, images, seed=5, data_steps=5)
    assert a == b
    assert a["parameter"] != c["parameter"]
    # the real encoder is never modified (copies are randomised)
    assert all(torch.equal(p, q) for p, q in zip(before, encoder.parameters()))


def test_a_map_that_ignores_the_encoder_is_flagged(small):
    encoder, images = small
    out = sanity_checks(TRIVIAL_MAPS["intensity"], encoder, images, seed=0, data_steps=3)
    assert out["flagged"] and all(p["spearman"] == pytest.approx(1.0) for p in out["parameter"])
    assert "randomised layers" in out["reasons"][0]


def test_randomised_copy_reinitialises_only_the_top_layers(small):
    encoder, _ = small
    layers = [name for name, _ in parametrised_layers(encoder)]
    assert layers[-1] == "fc"
    copy = randomised_copy(encoder, 1, seed=0)
    changed = [name for (name, m), (_, r) in zip(parametrised_layers(encoder), parametrised_layers(copy))
               if not all(torch.equal(p, q) for p, q in zip(m.parameters(recurse=False), r.parameters(recurse=False)))]
    assert changed == ["fc"]


def test_map_agreement_by_hand():
    a = torch.arange(16.0).reshape(1, 4, 4)
    same = map_agreement(a, a)
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0, abs=1e-4)
    flipped = map_agreement(a, -a)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["spearman_abs"] == pytest.approx(1.0)
    assert map_agreement(a, torch.zeros(1, 4, 4))["spearman"] == 0.0  # a constant map has no ranks


def test_trivial_maps_by_definition():
    images = blob_images(2, 16, seed=0)
    assert torch.equal(TRIVIAL_MAPS["intensity"](None, images), images[:, 0])
    centre = TRIVIAL_MAPS["centre"](None, images)
    assert centre.shape == (2, 16, 16) and torch.equal(centre[0], centre[1])
    assert centre[0, 7:9, 7:9].min() == centre.max() and centre[0, 0, 0] == centre.min()
    noise = TRIVIAL_MAPS["noise"](None, images, seed=3)
    assert torch.equal(noise, TRIVIAL_MAPS["noise"](None, images, seed=3))
    assert not torch.equal(noise, TRIVIAL_MAPS["noise"](None, images, seed=4))
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    edges = TRIVIAL_MAPS["edges"](None, step)[0]
    # the Sobel magnitude is large on the step and ~0 (kornia adds √eps) far from it
    assert edges[:, 3:5].min() > 0 and np.allclose(edges[:, :2].numpy(), 0, atol=0.01) and np.allclose(edges[:, 6:].numpy(), 0, atol=0.01)
