"""Mask samplings and control variates: deterministic, unbiased, same infinite-mask map.

The oracle is exact: with a 2×2 grid at p = 0.5 there are 2⁴ cell patterns × 2² shifts = 64
equally likely masks, so the infinite-mask RELAX map E[s M] / E[M] is a plain average over
``MaskDraw.every(2)``, computed here independently of ``relax_full``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError
from medcbir.explain import relax_full
from medcbir.explain.masks import SAMPLINGS, MaskDraw, cell_weights
from tests.explain.toys import SmallConvEncoder, ToyEncoder, blob_images

SIZE = 12


@pytest.fixture(scope="module")
def oracle():
    """Tiny encoder (depends on one region only), one image, and s / M for every one of the 64 masks of a 2×2 grid."""
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[1:7, 2:9] = True  # a localised representation: a map with structure to converge to
    enc = ToyEncoder(region, seed=2).eval()
    image = blob_images(1, SIZE, seed=5)
    every = MaskDraw.every(2)
    masks = every.masks(0, len(every), (SIZE, SIZE))
    with torch.no_grad():
        target = F.normalize(enc(image), dim=1)
        s = F.cosine_similarity(enc(image * masks[:, None]), target, dim=1).double()
    m = masks.flatten(1).double()
    exact_sm = (s[:, None] * m).mean(0)  # E[s M], per pixel
    exact_map = exact_sm / m.mean(0)  # E[s M] / E[M]
    return {"enc": enc, "image": image, "target": target, "every": every, "s": s, "m": m, "exact_sm": exact_sm, "exact_map": exact_map}


def config_index(draw: MaskDraw) -> torch.Tensor:
    """Index into MaskDraw.every(2) of each drawn mask (cells in product order, then the shift)."""
    bits = draw.grids.flatten(1).long()
    code = (bits * torch.tensor([8, 4, 2, 1])).sum(1)
    return code * 4 + draw.shift_x * 2 + draw.shift_y


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_draws_are_deterministic_for_a_seed(sampling):
    a = MaskDraw.draw(50, grid=7, seed=11, sampling=sampling)
    b = MaskDraw.draw(50, grid=7, seed=11, sampling=sampling)
    c = MaskDraw.draw(50, grid=7, seed=12, sampling=sampling)
    for name in ("grids", "shift_x", "shift_y", "halves"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.grids, c.grids)
    assert set(a.grids.unique().tolist()) <= {0.0, 1.0}
    assert int(a.shift_x.min()) >= 0 and int(a.shift_x.max()) <= 6


def test_antithetic_pairs_are_complements():
    draw = MaskDraw.draw(40, grid=7, seed=1, sampling="antithetic")
    masks = draw.masks(0, 40, (32, 32))
    np.testing.assert_allclose((masks[0::2] + masks[1::2]).numpy(), 1.0, atol=1e-6)
    # a pair stays in one half, so the halves are independent replicates
    assert torch.equal(draw.halves[0::2], draw.halves[1::2])
    with pytest.raises(ConfigError, match="p = 0.5"):
        MaskDraw.draw(10, p=0.4, sampling="antithetic")


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_draws_are_unbiased(oracle, sampling):
    """Mean over 400 seeds of (1/n) Σ s M equals the exact E[s M] within sampling error."""
    s, m = oracle["s"], oracle["m"]
    per_seed = []
    for seed in range(400):
        draw = MaskDraw.draw(16, grid=2, seed=seed, sampling=sampling)
        idx = config_index(draw)
        # the drawn masks are the enumeration's masks for those configurations
        if seed == 0:
            np.testing.assert_allclose(draw.masks(0, 16, (SIZE, SIZE)).flatten(1).numpy(), m[idx].float().numpy(), atol=1e-6)
        per_seed.append((s[idx, None] * m[idx]).mean(0))
    per_seed = torch.stack(per_seed)
    mean = per_seed.mean(0)
    se = per_seed.std(0) / np.sqrt(len(per_seed))
    z = ((mean - oracle["exact_sm"]).abs() / (se + 1e-12)).max().item()
    assert z < 4.5, f"{sampling}: |mean − exact| is {z:.1f} standard errors"
    # the check has power: drawing with p = 0.55 instead of 0.5 is caught
    biased = []
    for seed in range(400):
        draw = MaskDraw.draw(16, grid=2, p=0.55, seed=seed)
        idx = config_index(draw)
        biased.append((s[idx, None] * m[idx]).mean(0))
    biased = torch.stack(biased)
    z_biased = ((biased.mean(0) - oracle["exact_sm"]).abs() / (biased.std(0) / np.sqrt(400))).max().item()
    assert z_biased > 10


def test_every_mask_gives_the_exact_map_with_and_without_control_variates(oracle):
    """On the full enumeration (twice, so each half holds every mask) the estimator *is* the expectation."""
    draw = MaskDraw.every(2, repeat=2)
    for cv in (False, True):
        res = relax_full(oracle["enc"], oracle["image"], oracle["target"], draw=draw, control_variates=cv, batch_size=50)
        np.testing.assert_allclose(res.importance[0].flatten().numpy(), oracle["exact_map"].numpy(), atol=1e-6)


def test_cell_weights_are_the_exact_mean_weights():
    """E[(G_k − p) M_ij] = p(1 − p) A_k(ij): check A against the enumeration of a 2×2 grid."""
    every = MaskDraw.every(2)
    masks = every.masks(0, len(every), (SIZE, SIZE)).flatten(1).double()
    cells = every.cells(0, len(every))
    np.testing.assert_allclose((cells.T @ masks / len(every)).numpy(), (0.25 * cell_weights(2, (SIZE, SIZE)).flatten(1)).numpy(), atol=1e-7)
    np.testing.assert_allclose(masks.mean(0).numpy(), 0.5, atol=1e-7)


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("cv", [False, True])
def test_estimators_converge_to_the_exact_map(oracle, sampling, cv):
    """Every sampling × control-variate combination converges to the same exact map."""
    errors = []
    for n in (256, 32768):
        worst = 0.0
        for seed in (7,):
            res = relax_full(oracle["enc"], oracle["image"], oracle["target"], n_masks=n, seed=seed, grid=2, sampling=sampling, control_variates=cv, batch_size=4096)
            err = res.importance[0].flatten().double() - oracle["exact_map"]
            worst = max(worst, (err.pow(2).mean().sqrt() / oracle["exact_map"].std()).item())
        errors.append(worst)
    # RMS error relative to the map's spread across pixels (0.06 ≈ correlation 0.998)
    assert errors[1] < 0.06, errors
    assert errors[1] <= errors[0]


def test_control_variates_reduce_the_noise_on_a_7x7_grid():
    """Same masks, same forwards: the cross-fitted map is closer to a 4000-mask map than the plain one."""
    enc = SmallConvEncoder(seed=4).eval()
    image = blob_images(1, 32, seed=9)
    ref = relax_full(enc, image, n_masks=4000, seed=100, sampling="sobol", control_variates=True, batch_size=500).importance[0]
    plain, cv = [], []
    for seed in range(3):
        plain.append(np.corrcoef(relax_full(enc, image, n_masks=150, seed=seed).importance[0].flatten(), ref.flatten())[0, 1])
        cv.append(np.corrcoef(relax_full(enc, image, n_masks=150, seed=seed, control_variates=True).importance[0].flatten(), ref.flatten())[0, 1])
    assert min(cv) > max(plain)


def test_control_variates_need_drawn_masks():
    enc = SmallConvEncoder().eval()
    with pytest.raises(ConfigError, match="cells"):
        relax_full(enc, torch.rand(1, 1, 16, 16), masks=torch.rand(4, 16, 16), control_variates=True)
    with pytest.raises(ConfigError, match="sampling"):
        relax_full(enc, torch.rand(1, 1, 16, 16), n_masks=4, sampling="halton")


@pytest.mark.parametrize("grid, shape", [(2, (16, 16)), (3, (20, 13)), (4, (31, 32)), (7, (40, 36))])
def test_cell_weights_box_average_equals_rendering_every_shift(grid, shape):
    from medcbir.explain.masks import cell_weights_enumerated

    fast = cell_weights(grid, shape)
    assert fast.shape == (grid * grid, *shape) and fast.dtype == torch.float64
    np.testing.assert_allclose(fast.numpy(), cell_weights_enumerated(grid, shape).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.sum(0).numpy(), 1.0, atol=1e-6)  # every pixel's weights sum to 1
