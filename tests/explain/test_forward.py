"""RELAX through ONNX Runtime equals RELAX through torch on the same masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcbir.errors import ConfigError
from medcbir.explain import relax_full
from medcbir.explain import forward as fwd
from tests.explain.toys import SmallConvEncoder, blob_images


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCBIR_CACHE", str(tmp_path))
    monkeypatch.setattr(fwd, "_SESSIONS", {})
    return tmp_path


@pytest.mark.parametrize("options", [{}, {"sampling": "sobol", "control_variates": True}])
def test_onnx_runtime_relax_equals_torch_relax(private_cache, options):
    enc = SmallConvEncoder(seed=2).eval()
    images = blob_images(3, 32, seed=1)
    query = enc(images[:1]).detach()
    for targets in (None, query):
        torch_map = relax_full(enc, images, targets, n_masks=200, seed=5, batch_size=60, **options).importance
        onnx_map = relax_full(enc, images, targets, n_masks=200, seed=5, batch_size=60, backend="onnx", **options).importance
        np.testing.assert_allclose(onnx_map.numpy(), torch_map.numpy(), rtol=0, atol=1e-4)
    # exported once per weights, then reused from the cache folder
    assert len(list((private_cache / "explain-onnx").glob("*.onnx"))) == 1


def test_new_weights_get_a_new_export(private_cache):
    enc = SmallConvEncoder(seed=2).eval()
    images = blob_images(1, 32, seed=1)
    before = relax_full(enc, images, n_masks=40, seed=1, backend="onnx").importance
    with torch.no_grad():
        enc.fc.weight.mul_(-1.5)
    after = relax_full(enc, images, n_masks=40, seed=1, backend="onnx").importance
    expected = relax_full(enc, images, n_masks=40, seed=1).importance
    np.testing.assert_allclose(after.numpy(), expected.numpy(), atol=1e-4)
    assert not torch.allclose(before, after)


def test_int8_runs_and_stays_close(private_cache):
    enc = SmallConvEncoder(seed=2).eval()
    images = blob_images(2, 32, seed=1)
    fp32 = relax_full(enc, images, n_masks=200, seed=5).importance
    int8 = relax_full(enc, images, n_masks=200, seed=5, backend="onnx-int8").importance
    for i in range(2):
        assert np.corrcoef(fp32[i].flatten(), int8[i].flatten())[0, 1] > 0.9


def test_bad_backend_options():
    enc = SmallConvEncoder().eval()
    with pytest.raises(ConfigError, match="backend"):
        relax_full(enc, torch.rand(1, 1, 16, 16), n_masks=4, backend="tensorrt")
    with pytest.raises(ConfigError, match="torch backend only"):
        relax_full(enc, torch.rand(1, 1, 16, 16), n_masks=4, backend="onnx", precision="bf16")


def _corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_auto_backend_is_decided_once_from_the_cpu():
    native = ("torch", "bf16") if fwd.native_bf16() else ("onnx", "fp32")
    assert fwd.resolve_backend("auto", None, "cpu") == native
    assert fwd.resolve_backend("auto", "fp32", "cpu") == ("onnx", "fp32")  # fp32 asked: the faster fp32 backend
    assert fwd.resolve_backend("auto", "bf16", "cpu") == ("torch", "bf16")
    assert fwd.resolve_backend("auto", None, "cuda") == ("onnx", "fp32")
    assert fwd.resolve_backend("onnx", None) == ("onnx", "fp32")
    assert fwd.resolve_backend("torch", "bf16") == ("torch", "bf16")
    with pytest.raises(ConfigError, match="auto, torch, onnx, onnx-int8"):
        fwd.resolve_backend("tensorrt", None)


def _resnet():
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.module import new_encoder_module

    return new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), size=32), seed=0, pooling="gem")


def test_bf16_copy_is_folded_cached_and_leaves_the_encoder_alone(monkeypatch):
    monkeypatch.setattr(fwd, "_BF16_COPIES", {})
    enc = _resnet()
    folded = fwd.bf16_copy(enc)
    assert folded is not None and fwd.bf16_copy(enc) is folded  # made once per weights
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(p.dtype == torch.bfloat16 for p in folded.parameters())
    # the encoder itself keeps its batch norms and fp32 weights
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    x = blob_images(4, 32, seed=3)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(folded(x.to(torch.bfloat16)).float(), enc(x), dim=1)
    assert cos.min() > 0.999
    with torch.no_grad():
        next(enc.parameters()).mul_(-1.0)
    enc.refresh_fingerprint()
    assert fwd.bf16_copy(enc) is not folded  # new weights, new copy


def test_folded_bf16_relax_keeps_the_fp32_map(monkeypatch):
    monkeypatch.setattr(fwd, "_BF16_COPIES", {})
    enc = _resnet()
    images = blob_images(3, 32, seed=1)
    opts = {"n_masks": 120, "seed": 3, "sampling": "sobol", "control_variates": True, "batch_size": 60}
    fp32 = relax_full(enc, images, **opts).importance
    folded = relax_full(enc, images, precision="bf16", **opts).importance
    autocast = relax_full(enc, images, precision="bf16", fold=False, **opts).importance
    assert not torch.equal(folded, autocast)  # two different bf16 paths ...
    for i in range(3):  # ... both the fp32 map on the same masks
        assert _corr(folded[i], fp32[i]) > 0.999
        assert _corr(autocast[i], fp32[i]) > 0.999


class _Branching(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so bf16 falls back to autocast."""

    def __init__(self):
        super().__init__()
        self.inner = SmallConvEncoder(seed=4)

    def forward(self, x):
        if x.mean() > 2.0:
            x = x * 0.5
        return self.inner(x)


def test_untraceable_encoder_autocasts(monkeypatch):
    monkeypatch.setattr(fwd, "_BF16_COPIES", {})
    enc = _Branching().eval()
    assert fwd.bf16_copy(enc) is None
    images = blob_images(2, 32, seed=2)
    a = relax_full(enc, images, n_masks=40, seed=1, precision="bf16").importance
    b = relax_full(enc, images, n_masks=40, seed=1, precision="bf16", fold=False).importance
    assert torch.equal(a, b)
