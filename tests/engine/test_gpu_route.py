"""Filtered search stays correct on the GPU path (no GPU here: a test double SIMULATES one).

The double behaves as FAISS GPU indexes are documented to (faiss issues #3114/#3924: GPU indexes
ignore ``SearchParameters.sel``; #2103: k > 2048 throws): it searches the CPU index with no
parameters at all (selector dropped, knobs read from the index object) and refuses k × k_factor
above 2048. This is the only mock in these tests, and it stands for hardware absent here.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from medcbir.engine import Engine
from medcbir.engine.selectors import GPU_MAX_K, route
from medcbir.indexer import IndexWriter, delete, faiss_index
from tests.indexer.conftest import FakeEncoder, Meta


class SimulatedGpuIndex:
    """SIMULATES a FAISS GPU index: ignores ID selectors and search parameters, caps k at 2048."""

    def __init__(self, cpu_index, k_factor: float = 1.0) -> None:
        self.cpu = cpu_index
        self.k_factor = k_factor
        self.calls = 0

    def search(self, x, k, params=None):  # params (and their selector) are ignored, as on a GPU
        self.calls += 1
        if k * self.k_factor > GPU_MAX_K:
            raise RuntimeError(f"GPU index only supports min/max-K selection up to {GPU_MAX_K} (requested {k})")
        return self.cpu.search(x, k)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1200, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("gpu") / "ix"
    with IndexWriter.open(path, FakeEncoder(32), index_spec="Flat", shard_size=400) as w:
        w.add_embeddings([Meta(i, series=i % 7) for i in range(len(x))], x)
    delete(path, sop=[f"1.2.3.{i}" for i in range(0, 1200, 5)])  # tombstones: 20 % of items
    return path, x


def test_the_double_really_ignores_selectors(index_dir):
    path, x = index_dir
    engine = Engine.open(path, encoder=FakeEncoder(32))
    gpu = SimulatedGpuIndex(engine.index)
    sel = faiss.IDSelectorRange(0, 10)
    _, ids = gpu.search(x[:5], 10, params=faiss.SearchParameters(sel=sel))
    assert (ids >= 10).any()  # a naive GPU search would return excluded (e.g. deleted) items


def test_filtered_and_deleted_searches_on_the_gpu_path_equal_the_cpu(index_dir):
    path, x = index_dir
    cpu = Engine.open(path, encoder=FakeEncoder(32))
    gpu = Engine.open(path, encoder=FakeEncoder(32))
    gpu.gpu_index = SimulatedGpuIndex(gpu.index)
    q = x[1:40:3]
    for kwargs in ({}, {"series": "1.2.9.3"}, {"series": ["1.2.9.1", "1.2.9.2"]}):
        want = [[n.id for n in hits] for hits in cpu.search(q, k=10, **kwargs)]
        got = [[n.id for n in hits] for hits in gpu.search(q, k=10, **kwargs)]
        assert got == want
        assert gpu.last_route.path == "gpu"
        assert all(i % 5 for hits in got for i in hits)  # no tombstoned item came back
    assert gpu.gpu_index.calls == 3


def test_rows_left_short_by_the_gpu_are_searched_again_on_the_cpu(index_dir):
    path, x = index_dir
    cpu = Engine.open(path, encoder=FakeEncoder(32))
    gpu = Engine.open(path, encoder=FakeEncoder(32))
    gpu.gpu_index = SimulatedGpuIndex(gpu.index)
    # a series far from the query: its items are not in the over-fetched top list
    q = x[np.arange(0, 1200, 7) + 1][:4]
    want = [[n.id for n in hits] for hits in cpu.search(q, k=10, series="1.2.9.0")]
    got = [[n.id for n in hits] for hits in gpu.search(q, k=10, series="1.2.9.0")]
    assert got == want and all(len(h) == 10 for h in got)


def test_k_beyond_the_gpu_limit_runs_on_the_cpu(index_dir):
    path, x = index_dir
    gpu = Engine.open(path, encoder=FakeEncoder(32))
    gpu.gpu_index = SimulatedGpuIndex(gpu.index, k_factor=16)
    gpu.set_search_params(k_factor=16)  # 200 × 16 > 2048: the GPU would throw
    hits = gpu.search(x[:2], k=200)
    assert gpu.last_route.path == "cpu" and "2048" in gpu.last_route.reason
    assert gpu.gpu_index.calls == 0 and all(len(h) == 200 for h in hits)


def test_route_and_which_indexes_can_move_to_a_gpu():
    assert route(10, gpu=False, admissible=None, n_items=100).path == "cpu"
    assert route(10, gpu=True, admissible=None, n_items=100).fetch == 10
    assert route(10, gpu=True, admissible=0.5, n_items=10_000).fetch == 50
    assert route(10, gpu=True, admissible=None, n_items=10_000, k_factor=256).path == "cpu"
    hnsw = faiss.index_factory(16, "HNSW8,Flat", faiss.METRIC_INNER_PRODUCT)
    copy, why = faiss_index.gpu_copy(hnsw, to_gpu=lambda i: pytest.fail("HNSW must not be moved"))
    assert copy is None and why.startswith("cpu:") and "HNSW" in why
    shards = faiss.IndexShards(16, False, False)
    assert faiss_index.gpu_copy(shards, to_gpu=lambda i: pytest.fail("shards must not be moved"))[0] is None
    # an IVF base under a refine step moves; the exact re-rank stays on the CPU
    x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    refine = faiss.index_factory(16, "IVF4,SQ8,Refine(Flat)", faiss.METRIC_INNER_PRODUCT)
    refine.train(x)
    refine.add(x)
    moved = []
    copy, why = faiss_index.gpu_copy(refine, to_gpu=lambda i: moved.append(i) or faiss.clone_index(i))
    assert why.startswith("gpu:") and isinstance(faiss.downcast_index(moved[0]), faiss.IndexIVFScalarQuantizer)
    faiss_index.apply_gpu_params(copy, {"nprobe": 4, "k_factor": 8})
    assert faiss.downcast_index(copy).k_factor == 8
    faiss_index.apply_search_params(refine, {"nprobe": 4, "k_factor": 8})
    assert np.array_equal(copy.search(x[:20], 5)[1], refine.search(x[:20], 5)[1])


def test_onnx_runtime_cuda_provider_comes_from_onnx_runtime_not_torch(monkeypatch):
    """SIMULATED GPU: onnxruntime-gpu is not installed here, so ORT's provider list is patched to
    what onnxruntime-gpu reports on a CUDA machine; torch stays CPU-only (no CUDA here)."""
    import onnxruntime

    from medcbir import device

    device._ort_providers.cache_clear()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    try:
        assert not device._cuda_available()
        auto = device.Device.auto()
        assert auto.torch == "cpu" and auto.ort_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
        assert device.Device.auto(prefer="cpu").ort_providers == ("CPUExecutionProvider",)
    finally:
        device._ort_providers.cache_clear()


def test_cpu_and_gpu_wheels_side_by_side_are_reported(monkeypatch):
    from importlib import metadata

    from medcbir.device import wheel_conflicts

    assert wheel_conflicts() == []  # this environment has the CPU wheels only
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.15.1" if name == "faiss-gpu" else real(name))
    assert wheel_conflicts() == ["faiss-cpu and faiss-gpu"]


def test_gpu_check_says_there_is_no_gpu_here_and_exits_0():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no GPU here" in done.stdout
