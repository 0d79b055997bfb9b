"""Every method puts its mass where a toy encoder looks; CAMs match independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcbir.errors import ConfigError
from medcbir.explain import METHODS, ablation_cam, clustered_cam, gradcam, gradient, integrated_gradients, smoothgrad_ig
from medcbir.explain.metrics import relevance_rank_accuracy
from tests.explain.toys import SmallConvEncoder, ToyEncoder, blob_images

#: methods that explain any encoder; ``wildcat`` needs a fine-tuned WILDCAT head (tests/explain/test_wildcat.py)
GENERIC_METHODS = sorted(name for name in METHODS if name != "wildcat")

S = 32
REGION = torch.zeros(S, S, dtype=torch.bool)
REGION[4:16, 8:24] = True

OPTIONS = {"relax": {"n_masks": 400}, "occlusion": {"window": 4, "stride": 2}}


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Maps differ by more than 0.1 % of their scale (guided maps are ~1e-6 in absolute terms)."""
    a, b = a.numpy(), b.numpy()
    return float(np.abs(a - b).max()) > 1e-3 * max(float(np.abs(a).max()), float(np.abs(b).max()))


@pytest.fixture(scope="module")
def toy():
    return ToyEncoder(REGION, seed=0).eval(), blob_images(3, S, seed=1)


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_mass_lies_where_the_encoder_looks(toy, name):
    encoder, images = toy
    heat = METHODS[name](encoder, images, None, **OPTIONS.get(name, {}))
    assert heat.shape == (3, S, S) and heat.dtype == torch.float32
    assert torch.isfinite(heat).all()
    accuracy = np.mean([relevance_rank_accuracy(h, REGION) for h in heat])
    # the region's 1–2 px rim is inside the receptive field too, so "near 1", not exactly 1
    assert accuracy >= 0.75, (name, accuracy)


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_one_query_target_is_broadcast_and_decides_the_map(toy, name):
    """A 1×D query explains every image w.r.t. that query: the same maps as the B×D copy, other maps for another query."""
    encoder, images = toy
    with torch.no_grad():
        queries = encoder(blob_images(2, S, seed=11))
    one = METHODS[name](encoder, images, queries[:1], **OPTIONS.get(name, {}))
    expanded = METHODS[name](encoder, images, queries[:1].expand(3, -1), **OPTIONS.get(name, {}))
    assert not differ(one, expanded), name
    other = METHODS[name](encoder, images, queries[1:], **OPTIONS.get(name, {}))
    assert differ(one, other), name
    # whatever the query, the encoder only sees the region: so do the maps
    assert np.mean([relevance_rank_accuracy(h, REGION) for h in one]) >= 0.75, name


def test_gradcam_equals_autograd_by_hand():
    encoder = SmallConvEncoder(seed=2).eval()
    images = blob_images(2, S, seed=3)
    query = encoder(images[:1]).detach()
    store = {}
    handle = encoder.feature_layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    score = F.cosine_similarity(encoder(images), query.expand(2, -1), dim=1)
    handle.remove()
    a = store["a"]
    grads = torch.autograd.grad(score.sum(), a)[0]
    alpha = grads.mean((2, 3), keepdim=True)
    cam = F.relu((alpha * a).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(gradcam(encoder, images, query).numpy(), expected.detach().numpy(), atol=1e-6)


def test_gradient_equals_autograd_by_hand():
    encoder = SmallConvEncoder(seed=2).eval()
    images = blob_images(2, S, seed=3)
    query = encoder(images[:1]).detach()
    x = images.clone().requires_grad_(True)
    score = F.cosine_similarity(encoder(x), query.expand(2, -1), dim=1)
    expected = torch.autograd.grad(score.sum(), x)[0].abs().sum(1)
    np.testing.assert_allclose(gradient(encoder, images, query).numpy(), expected.numpy(), atol=1e-7)


def test_smoothgrad_ig_without_noise_is_integrated_gradients():
    """σ = 0: every noisy copy is the image, so the average of IG maps is the IG map."""
    encoder = SmallConvEncoder(seed=2).eval()
    images = blob_images(2, S, seed=3)
    query = encoder(images[:1]).detach()
    ours = smoothgrad_ig(encoder, images, query, n_samples=3, n_steps=8, noise=0.0)
    np.testing.assert_allclose(ours.numpy(), integrated_gradients(encoder, images, query, n_steps=8).numpy(), rtol=1e-4, atol=1e-7)
    assert differ(ours, smoothgrad_ig(encoder, images, query, n_samples=3, n_steps=8, noise=0.3))


def test_ablation_cam_equals_one_full_forward_per_channel():
    encoder = SmallConvEncoder(seed=2).eval()
    images = blob_images(2, S, seed=3)
    target = encoder(images).detach()
    store = {}
    h = encoder.feature_layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.no_grad():
        base = F.cosine_similarity(encoder(images), target, dim=1)
    h.remove()
    feats = store["a"]
    weights = torch.zeros(2, feats.shape[1])
    for k in range(feats.shape[1]):
        def zero_k(m, i, o, k=k):
            o = o.clone()
            o[:, k] = 0
            return o

        h = encoder.feature_layer.register_forward_hook(zero_k)
        with torch.no_grad():
            weights[:, k] = (base - F.cosine_similarity(encoder(images), target, dim=1)) / base
        h.remove()
    cam = F.relu(torch.einsum("bk,bkhw->bhw", weights, feats))[:, None]
    expected = F.interpolate(cam, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    got = ablation_cam(encoder, images, None, batch_size=7)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_clustered_cam_with_one_cluster_per_channel_is_ablation_cam():
    encoder = SmallConvEncoder(seed=2).eval()
    images = blob_images(1, S, seed=5)
    k = encoder.feature_layer[0].out_channels
    # dead channels merge into one cluster, but they carry no activation, so the maps still agree
    np.testing.assert_allclose(
        clustered_cam(encoder, images, None, n_clusters=k).numpy(),
        ablation_cam(encoder, images).numpy(),
        atol=1e-5,
    )


def test_bad_inputs_raise_config_error(toy):
    encoder, images = toy
    with pytest.raises(ConfigError):
        gradcam(encoder, images[0])
    with pytest.raises(ConfigError):
        gradcam(encoder, images, torch.rand(2, 16))
    with pytest.raises(ConfigError):
        gradcam(torch.nn.Sequential(torch.nn.Flatten()), images)


REAL_OPTIONS = {
    "relax": {"n_masks": 40},
    "occlusion": {"window": 16, "stride": 16},
    "integrated_gradients": {"n_steps": 6},
    "smoothgrad": {"n_samples": 3},
    "clustered_cam": {"n_clusters": 6},
}


@pytest.fixture(scope="module")
def real_encoder():
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.module import new_encoder_module

    return new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), size=64), seed=0)


def _hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_runs_on_the_medcbir_resnet18(real_encoder, name):
    """The trainer's encoder (MONAI ResNet-18, shared ReLU modules, layer4 feature layer).

    Each method leaves the encoder as it found it (no hooks, same embeddings, eval mode), is
    deterministic, and explains the target it is given: the map w.r.t. a query differs from the
    map w.r.t. the image's own embedding.
    """
    images = blob_images(1, 64, seed=7)
    query = real_encoder(blob_images(1, 64, seed=8)).detach()
    with torch.no_grad():
        before = real_encoder(images)
    hooks = _hooks(real_encoder)
    maps = {}
    for label, targets in (("own", None), ("query", query)):
        heat = METHODS[name](real_encoder, images, targets, **REAL_OPTIONS.get(name, {}))
        assert heat.shape == (1, 64, 64) and torch.isfinite(heat).all()
        assert float(heat.std()) > 0, name
        maps[label] = heat
    again = METHODS[name](real_encoder, images, query, **REAL_OPTIONS.get(name, {}))
    assert not differ(again, maps["query"]), name
    assert differ(maps["own"], maps["query"]), name
    assert _hooks(real_encoder) == hooks and not real_encoder.training
    with torch.no_grad():
        torch.testing.assert_close(real_encoder(images), before)
