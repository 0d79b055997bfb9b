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
