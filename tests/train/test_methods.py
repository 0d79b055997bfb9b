"""The self-supervised methods: losses against hand computations, and learning on real slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError
from medcbir.encoders.backbones import build_backbone
from medcbir.train.methods import METHODS, build_method
from medcbir.train.moco import MoCo, info_nce
from medcbir.train.rotation import rotate_four
from medcbir.train.simclr import nt_xent
from medcbir.train.simsiam import SimSiam, simsiam_loss
from medcbir.train.views import BatchAugment, make_views, parse_views


@pytest.fixture(scope="module")
def hu_batch(phantom_archive):
    """Eight real phantom slices, resized to 64 px, in HU (every 10th slice: varied anatomy)."""
    from medcbir.train.dataset import load_hu_dataset

    data = load_hu_dataset(phantom_archive, 64, workers=1)
    return data.pixels()[::10][:8]


def test_simsiam_loss_matches_a_hand_computation():
    p1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    p2 = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    z1 = torch.tensor([[4.0, 3.0], [-1.0, 0.0]])
    # cos(p1,z2) = (1/√2, 1); cos(p2,z1) = (24/25, -1)
    expected = 0.5 * -((1 / math.sqrt(2) + 1) / 2) + 0.5 * -((24 / 25 - 1) / 2)
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected, abs=1e-7)


def test_simsiam_stops_the_gradient_through_the_target():
    p = torch.tensor([[1.0, 2.0]], requires_grad=True)
    z = torch.tensor([[2.0, -1.0]], requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert z.grad is None or torch.all(z.grad == 0)
    assert p.grad is not None and torch.any(p.grad != 0)


def test_simsiam_forward_is_the_symmetrised_negative_cosine_of_its_heads(hu_batch):
    torch.manual_seed(0)
    method = SimSiam(build_backbone("resnet18"), 512, proj_dim=64, pred_dim=16).train()
    x1, x2 = make_views(hu_batch, parse_views("hu-narrow,hu-wide"), None)
    loss = method([x1, x2])
    with torch.no_grad():  # the same modules, the same batches (batch-norm statistics match)
        z1 = method.projector(method.backbone(x1)).numpy()
        z2 = method.projector(method.backbone(x2)).numpy()
        p1, p2 = method.predictor(torch.from_numpy(z1)).numpy(), method.predictor(torch.from_numpy(z2)).numpy()

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    expected = -0.5 * cos(p1, z2).mean() - 0.5 * cos(p2, z1).mean()
    assert loss.item() == pytest.approx(float(expected), abs=1e-5)


def test_nt_xent_matches_a_loop_over_anchors():
    torch.manual_seed(1)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    u = F.normalize(torch.cat([a, b]), dim=1).numpy()
    tau, n, total = 0.5, 3, 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        total += -np.log(np.exp(u[i] @ u[j] / tau) / sum(np.exp(u[i] @ u[k] / tau) for k in others))
    assert nt_xent(a, b, tau).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_info_nce_matches_its_formula():
    torch.manual_seed(2)
    q, k, queue = (F.normalize(torch.randn(*s), dim=1) for s in [(2, 4), (2, 4), (5, 4)])
    tau = 0.2
    expected = 0.0
    for i in range(2):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(5))
        expected += -math.log(pos / (pos + neg)) / 2
    assert info_nce(q, k, queue, tau).item() == pytest.approx(expected, rel=1e-5)


def test_moco_updates_its_key_encoder_by_momentum_and_fills_its_queue(hu_batch):
    torch.manual_seed(3)
    method = MoCo(build_backbone("resnet18"), 512, proj_dim=16, queue_size=12, momentum=0.9)
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.01)  # make query and key encoders differ
    key_before = method.key_backbone.conv1.weight.clone()
    query = method.backbone.conv1.weight.clone()
    views = make_views(hu_batch, parse_views(None), None)
    method(views)
    torch.testing.assert_close(method.key_backbone.conv1.weight, 0.9 * key_before + 0.1 * query)
    assert int(method.queue_ptr) == 8
    method(views)
    assert int(method.queue_ptr) == (16 % 12)
    np.testing.assert_allclose(method.queue.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert not any(p.requires_grad for p in method.key_backbone.parameters())
    assert all(p.requires_grad for p in method.trainable_parameters())


def test_rotate_four_labels_each_rotation():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    rotated, labels = rotate_four(x)
    assert rotated.shape == (8, 1, 2, 2) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[2, 0], torch.tensor([[1.0, 3.0], [0.0, 2.0]]))  # 90° counter-clockwise


METHOD_SETUPS = {
    # SimSiam starts near zero loss (random predictor) and needs a larger step to move.
    "simsiam": ({"proj_dim": 256, "pred_dim": 64}, 0.1),
    "simclr": ({"proj_dim": 64}, 0.02),
    "moco": ({"proj_dim": 64, "queue_size": 4096}, 0.02),
    "rotation": ({}, 0.01),
}


@pytest.mark.parametrize("name", sorted(METHOD_SETUPS))
def test_each_method_lowers_its_loss_on_a_fixed_batch(name, hu_batch):
    options, lr = METHOD_SETUPS[name]
    torch.manual_seed(0)
    method = build_method(name, build_backbone("resnet18"), 512, **options).train()
    views = make_views(hu_batch, parse_views("hu-narrow,hu-wide"), BatchAugment(64))
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(6):
        loss = method(views[: METHODS[name].n_views])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


def test_unknown_method_or_option_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("byol", build_backbone("resnet18"), 512)
    with pytest.raises(ConfigError, match="bad option"):
        build_method("simclr", build_backbone("resnet18"), 512, queue_size=3)
