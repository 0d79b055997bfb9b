"""Batched RELAX: equal to a per-image, per-mask loop on the same masks; agrees with relax-xai."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError
from medcbir.explain import draw_masks, relax, relax_full
from tests.explain.toys import SmallConvEncoder, ToyEncoder, blob_images


def naive_relax(encoder, image, target, masks):
    """relax-xai's running update written out: one image, one mask at a time, float64."""
    h, w = image.shape[-2:]
    importance = torch.zeros(h, w, dtype=torch.float64)
    uncertainty = torch.zeros(h, w, dtype=torch.float64)
    weights = 1e-10 * torch.ones(h, w, dtype=torch.float64)
    with torch.no_grad():
        for mask in masks:
            emb = encoder(image[None] * mask[None, None])
            s = F.cosine_similarity(emb, target[None], dim=1)[0].double()
            m = mask.double()
            weights += m
            previous = importance.clone()
            importance += m * (s - importance) / weights
            uncertainty += (s - importance) * (s - previous) * m
    u_relax = importance * (uncertainty <= uncertainty.median())
    return importance, uncertainty, u_relax


def test_batched_equals_per_mask_loop():
    torch.manual_seed(0)
    enc = SmallConvEncoder(seed=1).eval()
    images = blob_images(3, 32, seed=2)
    query = enc(images[:1]).detach()
    masks = draw_masks(150, (32, 32), seed=5)
    for targets in (None, query):
        # an odd batch size so forward batches straddle images and masks unevenly
        res = relax_full(enc, images, targets, masks=masks, batch_size=37)
        assert res.n_masks_used == 150
        for i in range(3):
            tgt = enc(images[i : i + 1]).detach()[0] if targets is None else query[0]
            imp, unc, u = naive_relax(enc, images[i], tgt, masks)
            np.testing.assert_allclose(res.importance[i].numpy(), imp.numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(res.uncertainty[i].numpy(), unc.numpy(), rtol=1e-5, atol=1e-5)
            # U-RELAX: same selection wherever the uncertainty is not within rounding of the median
            clear = (unc - unc.median()).abs() > 1e-5 * unc.median()
            assert clear.float().mean() > 0.95
            np.testing.assert_allclose(res.u_relax[i][clear].numpy(), u[clear].numpy(), atol=1e-5)


def test_masks_follow_relax_xai_generator():
    """Same RNG stream → the same masks as relax-xai's mask_generator (grid, upsample, shift)."""
    from relax_xai.masking_functions import mask_generator

    ours = draw_masks(40, (32, 32), grid=7, p=0.5, seed=3)
    torch.manual_seed(3)
    theirs = next(mask_generator(40, (32, 32), "cpu"))[:, 0]
    # relax-xai draws grid, shift_x, shift_y from the global stream in the same order
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
    assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0


def test_deterministic_for_seed_whatever_the_batch_size():
    enc = SmallConvEncoder(seed=1).eval()
    images = blob_images(2, 32, seed=4)
    a = relax(enc, images, n_masks=90, seed=11, batch_size=16)
    b = relax(enc, images, n_masks=90, seed=11, batch_size=200)
    c = relax(enc, images, n_masks=90, seed=12, batch_size=200)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert not torch.allclose(a, c)
    assert a.dtype == torch.float32 and a.shape == (2, 32, 32)


@pytest.fixture
def relax_xai(monkeypatch):
    """relax-xai's RELAX class; its utils module (torchvision only) is stubbed, not installed."""
    stub = types.ModuleType("relax_xai.utils")
    stub.imagenet_image_transforms = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "relax_xai.utils", stub)
    monkeypatch.delitem(sys.modules, "relax_xai.relax", raising=False)
    return importlib.import_module("relax_xai.relax").RELAX


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def _reference_run(relax_cls, encoder, image, seed):
    torch.manual_seed(seed)
    reference = relax_cls(image, encoder, batch_size=100, num_batches=30)
    with torch.no_grad():
        reference.forward()
    return reference


def test_equals_relax_xai_on_its_own_masks(relax_xai):
    """Fed the masks relax-xai draws, batched RELAX reproduces its importance and uncertainty."""
    from relax_xai.masking_functions import mask_generator

    enc = SmallConvEncoder(seed=4).eval()
    image = blob_images(1, 32, seed=9)
    reference = _reference_run(relax_xai, enc, image, seed=100)
    torch.manual_seed(100)
    masks = torch.cat([next(mask_generator(100, (32, 32), "cpu")) for _ in range(30)])
    ours = relax_full(enc, image, masks=masks, batch_size=64)
    np.testing.assert_allclose(ours.importance[0].numpy(), reference.importance.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.uncertainty[0].numpy(), reference.uncertainty.numpy(), rtol=1e-3, atol=1e-4)


def test_agrees_with_relax_xai_at_3000_masks(relax_xai):
    """Independent draws, 3000 masks each: r ≥ 0.95 on an encoder with a localised representation."""
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[4:16, 8:24] = True
    enc = ToyEncoder(region, seed=0).eval()
    image = blob_images(1, 32, seed=9)
    reference = _reference_run(relax_xai, enc, image, seed=123)
    ours = relax_full(enc, image, n_masks=3000, seed=0)
    assert _pearson(ours.importance[0], reference.importance) >= 0.95
    assert _pearson(ours.uncertainty[0], reference.uncertainty) >= 0.9


def test_agreement_is_limited_only_by_monte_carlo_noise(relax_xai):
    """On a diffuse generic encoder, ours vs relax-xai is as close as relax-xai vs itself."""
    enc = SmallConvEncoder(seed=4).eval()
    image = blob_images(1, 32, seed=9)
    ref_a = _reference_run(relax_xai, enc, image, seed=1).importance
    ref_b = _reference_run(relax_xai, enc, image, seed=2).importance
    ours = relax(enc, image, n_masks=3000, seed=0)[0]
    ours_vs_ref = (_pearson(ours, ref_a) + _pearson(ours, ref_b)) / 2
    assert ours_vs_ref >= _pearson(ref_a, ref_b) - 0.03


def test_adaptive_stops_early_and_stays_close_to_3000():
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:28, 4:20] = True
    enc = ToyEncoder(region, seed=1).eval()
    images = blob_images(2, 32, seed=9)
    full = relax(enc, images, n_masks=3000, seed=1)
    res = relax_full(enc, images, n_masks=3000, seed=2, adaptive=True, target_r=0.98, check_every=100)
    assert res.n_masks_used < 3000
    for i in range(2):
        assert _pearson(res.importance[i], full[i]) >= 0.95


def test_bad_options_raise_config_error():
    enc = SmallConvEncoder().eval()
    with pytest.raises(ConfigError):
        relax(enc, torch.rand(1, 32, 32), n_masks=10)
    with pytest.raises(ConfigError):
        relax(enc, torch.rand(1, 1, 32, 32), n_masks=0)
    with pytest.raises(ConfigError):
        relax(enc, torch.rand(1, 1, 32, 32), n_masks=10, p=1.5)
    with pytest.raises(ConfigError):
        relax(enc, torch.rand(2, 1, 32, 32), torch.rand(3, 32), n_masks=10)
