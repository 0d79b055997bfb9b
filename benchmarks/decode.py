"""Decode benchmark: items/s reading a phantom archive with N worker processes vs one process.

The archive is written once with ``medcbir.imaging.phantom.make_archive`` under
``benchmarks/work/decode-P-S-Z/`` (P patients × S slices at Z px; the phantom mixes storage
conventions and compresses some files, like a real archive).

Measured in one run, in interleaved rounds (best round per configuration, ``--repeat``):

- **floor**: pydicom alone in one process (``dcmread`` + ``pixel_array`` + ``apply_modality_lut``
  for every file): the decoding work itself, with none of medcbir's bookkeeping;
- **medcbir, 1 process** (``walk(workers=1)``): our per-item overhead against the floor;
- **medcbir, N workers** (``walk(workers=N)``, forkserver workers, in-order results): the speed-up
  over one process (the peer), whose ideal is min(N, cores)× the single-process rate;
- each both as raw items (HU) and preprocessed model input (resize to 224 + one window), which
  is what the indexer asks for.

Usage::

    .venv/bin/python benchmarks/decode.py [--patients 8 --slices 64 --size 256 --workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402


def floor_rate(archive: Path) -> tuple[float, int]:
    """Items/s of bare pydicom decoding + modality LUT, in this process."""
    import warnings

    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from medcbir.imaging import list_files

    paths = [p for p in list_files(archive) if p.suffix not in (".csv", ".h5", ".json")]
    t0 = time.perf_counter()
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            ds = pydicom.dcmread(path)
            hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            n += 1 if hu.ndim == 2 else hu.shape[0]
    return n / (time.perf_counter() - t0), n


#: CPU seconds per item spent in the calling process, per (mode, workers): with workers this is
#: the parent's share (receiving, unpickling, ordering), which bounds how far workers can scale
#: whatever the machine's load.
PARENT_CPU: dict[tuple[str, int], float] = {}


def walk_rate(archive: Path, workers: int, preprocessing, mode: str = "raw") -> tuple[float, int]:
    from medcbir.imaging import walk

    t0, c0 = time.perf_counter(), time.process_time()
    w = walk(archive, workers=workers, preprocessing=preprocessing)
    n = sum(1 for _ in w)
    cpu = (time.process_time() - c0) / max(n, 1)
    PARENT_CPU[(mode, workers)] = min(cpu, PARENT_CPU.get((mode, workers), cpu))
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 = in-process)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds; the best round of each configuration counts")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    if 1 not in workers:
        workers.insert(0, 1)

    from medcbir.imaging import Preprocessing

    t0 = time.perf_counter()
    archive = _results.cached_phantom("decode", args.patients, args.slices, args.size)
    print(f"archive {archive} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    walk_rate(archive, 1, None)  # warm the page cache and imports
    # The first parallel walk of a process starts the forkserver (imports the decoders once);
    # measured apart, then excluded from the steady-state rates below.
    first = next(iter(p for p in sorted(archive.rglob("*.dcm"))), None)
    t1 = time.perf_counter()
    walk_rate(first if first is not None else archive, 2, None)
    startup = time.perf_counter() - t1
    print(f"worker start-up (forkserver + first worker, once per process): {startup:.2f} s", flush=True)

    # Rounds interleave every configuration so that load from other jobs on a shared machine hits
    # them alike; each configuration keeps its best round.
    modes = {"raw": None, "preprocessed": Preprocessing(windows=("ct-liver-wide",), size=224)}
    floor, n_items = 0.0, 0
    rates: dict[str, dict[int, float]] = {mode: {n: 0.0 for n in workers} for mode in modes}
    for round_ in range(args.repeat):
        rate, n_items = floor_rate(archive)
        floor = max(floor, rate)
        for mode, prep in modes.items():
            for n in workers:
                rate, items = walk_rate(archive, n, prep, mode)
                assert items == n_items, (items, n_items)
                rates[mode][n] = max(rates[mode][n], rate)
        print(f"round {round_ + 1}/{args.repeat}: floor {floor:.0f} items/s, " + ", ".join(
            f"{mode} w={n}: {rates[mode][n]:.0f}" for mode in modes for n in workers), flush=True)

    cores = os.cpu_count() or 1
    rows = []
    data = {
        "patients": args.patients,
        "slices": args.slices,
        "size": args.size,
        "items": n_items,
        "cores": cores,
        "floor_items_per_s": floor,
        "worker_startup_s": startup,
        "modes": {},
    }
    for mode in modes:
        single = rates[mode][1]
        data["modes"][mode] = {}
        for n in workers:
            ideal = min(n, cores)
            speedup = rates[mode][n] / single
            data["modes"][mode][str(n)] = {
                "items_per_s": rates[mode][n],
                "speedup_vs_1_process": speedup,
                "ideal_speedup": ideal,
                "calling_process_cpu_ms_per_item": 1000 * PARENT_CPU[(mode, n)],
            }
            rows.append(
                f"| {mode} | {n} | {rates[mode][n]:.0f} | {single:.0f} | {speedup:.2f}× | {ideal}× | {floor:.0f} | {rates[mode][n] / (floor * ideal):.2f} |"
            )
    overhead = rates["raw"][1] / floor
    load = os.getloadavg()[0]
    data["load_average_1min_at_end"] = load
    cpu_single = PARENT_CPU[("raw", 1)]
    cpu_parent = PARENT_CPU[("raw", max(workers))]
    scaling_bound = cpu_single / cpu_parent if cpu_parent > 0 else float("inf")
    data["parent_bound_workers"] = scaling_bound
    data["single_process_vs_floor"] = overhead
    top = max(workers)
    speedup_raw = rates["raw"][top] / rates["raw"][1]
    goal = 0.8 * min(top, cores)
    verdict = "met" if speedup_raw >= goal else f"missed by {100 * (1 - speedup_raw / goal):.0f} %"
    markdown = (
        f"Phantom archive: {args.patients} patients × {args.slices} slices at {args.size} px = {n_items} items "
        f"(mixed storage, some files compressed), {cores} cores, best of {args.repeat} interleaved rounds.\n\n"
        "| mode | workers | medcbir items/s | peer: 1 process items/s | speed-up | ideal | floor items/s (pydicom, 1 process) | of floor × ideal |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"medcbir in one process runs at {overhead:.2f}× the bare pydicom floor (metadata, float32, pseudonym, "
        f"bookkeeping). Goal: {top} workers ≥ {goal:.1f}× one process on raw decoding — {verdict} "
        f"(measured {speedup_raw:.2f}×) with a 1-min load average of {load:.1f} on {cores} cores at the end of the run. "
        f"Load-independent view: with {top} workers the calling process spends {1000 * cpu_parent:.2f} ms CPU per item "
        f"(receive, unpickle, order) against {1000 * cpu_single:.2f} ms for decoding an item itself, so the parent "
        f"saturates only beyond ~{scaling_bound:.0f} busy workers. Worker start-up, paid once per process when the first "
        f"parallel walk begins: {startup:.2f} s (excluded above). The machine is shared with other jobs, so "
        "parallel figures are noisy."
    )
    command = f".venv/bin/python benchmarks/decode.py --patients {args.patients} --slices {args.slices} --size {args.size} --workers {args.workers}"
    _results.record("decode", data, markdown, command)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
