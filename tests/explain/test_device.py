"""The explain stage on a CUDA encoder: inputs and targets go to the Device, results come back.

There is no GPU on the test machine: these tests run under :class:`SimulatedCuda`, a stand-in
(mock) for a CUDA device that raises exactly where real CUDA raises — an operation mixing a CUDA
and a CPU tensor, ``.numpy()`` of a CUDA tensor, a CPU input to a CUDA module — see
``tests/explain/simulated_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcbir.device import Device
from medcbir.engine import Engine
from medcbir.explain import explain_search, relax_full
from tests.explain.indexes import query_file
from tests.explain.simulated_cuda import CudaOnlyEncoder, SimulatedCuda
from tests.explain.toys import SmallConvEncoder, blob_images

CUDA = Device(torch="cuda")


def test_simulation_raises_where_cuda_raises():
    """The stand-in is strict: it would catch each of the defects it is used to test for."""
    enc = CudaOnlyEncoder(SmallConvEncoder(seed=1).eval())
    x = torch.rand(2, 1, 16, 16)
    with SimulatedCuda(), torch.no_grad():
        with pytest.raises(RuntimeError, match="weight type"):
            enc(x)  # a CPU batch to a CUDA module
        out = enc(x.to(CUDA.torch))
        assert out.device.type == "cuda"
        with pytest.raises(TypeError, match="numpy"):
            out.numpy()
        with pytest.raises(RuntimeError, match="same device"):
            out @ torch.rand(out.shape[1], 3)
        assert isinstance(out.cpu().numpy(), np.ndarray)


@pytest.mark.parametrize("options", [{}, {"sampling": "antithetic", "control_variates": True, "adaptive": True, "min_masks": 20}])
def test_relax_on_a_cuda_encoder_equals_cpu(options):
    inner = SmallConvEncoder(seed=1).eval()
    images = blob_images(2, 32, seed=3)
    query = inner(images[:1]).detach()
    expected = relax_full(inner, images, query, n_masks=60, seed=2, batch_size=30, **options)
    enc = CudaOnlyEncoder(inner)
    with SimulatedCuda():
        got = relax_full(enc, images, query, n_masks=60, seed=2, batch_size=30, device=CUDA, **options)
        heat = got.importance.numpy()  # the result is on the CPU
    assert enc.calls > 0
    np.testing.assert_allclose(heat, expected.importance.numpy(), atol=1e-6)
    assert got.n_masks_used == expected.n_masks_used


@pytest.mark.parametrize("method", ["relax", "occlusion"])
def test_explain_search_on_a_cuda_encoder(explain_index, phantom_archive, method):
    """explain_search with the engine's encoder on the (simulated) GPU gives the CPU heatmaps.

    Forward-only methods: the simulated module runs its layers on host tensors, so gradients and
    feature hooks inside it cannot be simulated faithfully; the runner's plumbing (inputs and
    targets moved to the Device, heatmaps brought back) is the same code for every method.
    """
    engine = Engine.open(explain_index)
    query = str(query_file(phantom_archive))
    options = {"n_masks": 40, "seed": 1, "batch_size": 40} if method == "relax" else {}
    cpu = explain_search(engine, query, k=2, method=method, **options)
    module = engine.encoder.module
    engine.encoder.module = CudaOnlyEncoder(module)
    engine.encoder.device = CUDA
    try:
        with SimulatedCuda():
            gpu = explain_search(engine, query, k=2, method=method, **options)
    finally:
        engine.encoder.module, engine.encoder.device = module, Device.cpu()
    assert [n.id for n in gpu.neighbours] == [n.id for n in cpu.neighbours]
    np.testing.assert_allclose(gpu.heatmaps, cpu.heatmaps, atol=1e-5)
