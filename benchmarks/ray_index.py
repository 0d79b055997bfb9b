"""Ray indexing benchmark: the same archive indexed single-process, on Ray with 1 and 2 workers.

Measured in one run, same archive, encoder, batch size, shard size and machine:

- **single-process** ``index_archive`` (the peer): decode worker processes + embedding in this
  process;
- **Ray, 1 worker** ``index_archive(..., ray=True, ray_workers=1)``: Ray Data decode tasks →
  one embedding actor writing shards → driver commits; the local runtime (2 CPUs) is started
  once before the Ray rounds and its start-up time is reported separately;
- **Ray, 2 workers**: two embedding actors (this machine has 2 cores: reported as is).

Goal: Ray-1 ≥ 0.85 × single-process (the engine's overhead is small). Rounds are interleaved
and the best of each is kept (the machine is shared; the load average is recorded).

It also measures the per-item figures ``docs/scale.md`` extrapolates from: decode ms/item
(one process), embed ms/item (encoder alone on pre-decoded images), on-disk bytes/item of the
index built here, and the FAISS code size per item of the ``auto`` spec above 65,536 items.

Usage::

    .venv/bin/python benchmarks/ray_index.py [--patients 4 --slices 48 --size 256 --shard-size 32 --rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402


def per_item_figures(encoder, archive: Path, n: int, batch_size: int) -> dict:
    """Decode ms/item (in-process) and embed ms/item (encoder alone) on ``n`` items."""
    from medcbir.imaging import list_files, walk

    files = [p for p in list_files(archive) if p.suffix == ".dcm"][:n]
    t0 = time.perf_counter()
    images = np.stack([d.image for d in walk(files, preprocessing=encoder.preprocessing, workers=1)])
    decode = (time.perf_counter() - t0) / len(images)
    encoder.embed(images[:batch_size], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    encoder.embed(images, batch_size=batch_size)
    embed = (time.perf_counter() - t0) / len(images)
    return {"decode_ms_per_item": decode * 1e3, "embed_ms_per_item": embed * 1e3, "items": len(images)}


def index_bytes(index: Path) -> dict:
    import json

    manifest = json.loads((index / "manifest.json").read_text())
    shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    return {"items": manifest["next_id"], "shard_bytes_per_item": shard_bytes / max(1, manifest["next_id"])}


def auto_code_bytes(dim: int) -> dict:
    """Bytes per item of the ``auto`` approximate spec: IVF-PQ code and the refine step's vectors."""
    import faiss

    from medcbir.indexer import faiss_index

    spec = faiss_index.auto_spec(dim)
    base, _ = faiss_index.split_refine(spec)
    index = faiss.index_factory(dim, base, faiss.METRIC_INNER_PRODUCT)
    return {"spec": spec, "sa_code_bytes": int(index.sa_code_size()), "refine_bytes": 4 * dim,
            "train_sample": faiss_index.TRAIN_SAMPLE, "auto_flat_max": faiss_index.AUTO_FLAT_MAX}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--encoder", default="default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray

    from medcbir.indexer import index_archive, verify
    from medcbir.encoders.runtime import open_encoder

    archive = _results.cached_phantom("ray-index", args.patients, args.slices, args.size)
    encoder = open_encoder(args.encoder)
    load_before = os.getloadavg()
    figures = per_item_figures(encoder, archive, 64, args.batch_size)

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    runs: dict[str, list[float]] = {"single": [], "ray-1": [], "ray-2": []}
    work = Path(tempfile.mkdtemp(prefix="medcbir-ray-bench-"))
    sizes = {}
    try:
        for r in range(args.rounds):
            for name, options in (("single", {}), ("ray-1", {"ray": True, "ray_workers": 1}), ("ray-2", {"ray": True, "ray_workers": 2})):
                out = work / f"{name}-{r}"
                summary = index_archive(archive, out, args.encoder, shard_size=args.shard_size, batch_size=args.batch_size,
                                        progress=False, **options)
                report = verify(out)
                assert report.ok, report.problems
                runs[name].append(summary.items_per_s)
                sizes[name] = {**index_bytes(out), "indexed": summary.indexed}
                print(f"round {r} {name}: {summary.indexed} items, {summary.items_per_s:.2f} items/s", flush=True)
                shutil.rmtree(out)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    best = {k: max(v) for k, v in runs.items()}
    ratio1 = best["ray-1"] / best["single"]
    ratio2 = best["ray-2"] / best["single"]
    codes = auto_code_bytes(int(encoder.dim))
    data = {
        "archive": {"patients": args.patients, "slices": args.slices, "size": args.size, "items": sizes["single"]["indexed"]},
        "encoder": args.encoder, "input": list(encoder.input_shape), "batch_size": args.batch_size, "shard_size": args.shard_size,
        "items_per_s": runs, "best": best, "ray1_over_single": ratio1, "ray2_over_single": ratio2,
        "ray_start_seconds": ray_start, "per_item": figures, "index_bytes": sizes["single"], "auto_spec": codes,
        "loadavg_before": load_before, "loadavg_after": load_after,
    }
    met = "met" if ratio1 >= 0.85 else f"missed by {0.85 - ratio1:.2f}"
    fmt = lambda v: ", ".join(f"{x:.1f}" for x in v)  # noqa: E731
    markdown = (
        f"Phantom archive {args.patients}×{args.slices} slices at {args.size} px ({data['archive']['items']} items), encoder "
        f"`{args.encoder}` ({'×'.join(map(str, encoder.input_shape))}, fp32), batch {args.batch_size}, shard size {args.shard_size}, "
        f"CPU, local Ray runtime with {os.cpu_count()} CPUs (start-up {ray_start:.1f} s, not counted); best of {args.rounds} interleaved rounds. "
        f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores shared with other engineers: noisy).\n\n"
        f"| | items/s (best) | all rounds | vs single-process |\n|---|---:|---|---:|\n"
        f"| single-process `index_archive` (peer) | {best['single']:.1f} | {fmt(runs['single'])} | 1.00 |\n"
        f"| Ray, 1 embedding actor | {best['ray-1']:.1f} | {fmt(runs['ray-1'])} | **{ratio1:.2f}** (goal ≥ 0.85: {met}) |\n"
        f"| Ray, 2 embedding actors (2 cores) | {best['ray-2']:.1f} | {fmt(runs['ray-2'])} | {ratio2:.2f} |\n\n"
        f"Per item on this machine (one process): decode + preprocess {figures['decode_ms_per_item']:.1f} ms, "
        f"embed {figures['embed_ms_per_item']:.1f} ms (encoder alone, batch {args.batch_size}); shards on disk "
        f"{sizes['single']['shard_bytes_per_item']:.0f} bytes/item; `auto` spec above {codes['auto_flat_max']:,} items "
        f"`{codes['spec']}`: {codes['sa_code_bytes']} bytes/item of IVF-PQ codes + {codes['refine_bytes']} bytes/item "
        f"for the exact re-rank, trained on {codes['train_sample']:,} items (see docs/scale.md)."
    )
    _results.record("ray_index", data, markdown, "python benchmarks/ray_index.py " + " ".join(sys.argv[1:]))
    print(markdown)


if __name__ == "__main__":
    main()
