"""Phantom generation speed (issue 10, item 1: ≥ 100 slices/s at 256 px on 2 cores).

``make_archive`` with its default workers (patients rendered and written in worker processes)
against the same call in one process (``workers=1``, the peer: the naive loop), same arguments,
same run; the bytes written are identical (tested in tests/imaging). Slices per wall second,
best of ``--repeat`` interleaved rounds, RLE and JPEG 2000 lossless scanners included.

Run: ``.venv/bin/python benchmarks/phantom.py [--patients 8 --slices 32 --size 256]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

from medcbir.imaging.phantom import make_archive  # noqa: E402

GOAL = 100.0


def rate(folder: Path, args, workers: int) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    summary = make_archive(folder, patients=args.patients, slices=args.slices, seed=7, size=args.size, workers=workers)
    return summary.files / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    runs: dict[str, list[float]] = {"ours": [], "peer": []}
    with tempfile.TemporaryDirectory(prefix="medcbir-bench-phantom-") as tmp:
        make_archive(Path(tmp) / "warm", patients=1, slices=2, seed=0, size=args.size)  # imports, caches
        for _ in range(args.repeat):
            runs["ours"].append(rate(Path(tmp) / "ours", args, 0))
            runs["peer"].append(rate(Path(tmp) / "peer", args, 1))
    ours, peer = max(runs["ours"]), max(runs["peer"])
    slices = args.patients * args.slices
    verdict = "**met**" if ours >= GOAL else f"**missed** by {GOAL - ours:.0f} slices/s"
    md = f"""`make_archive` (phantom v2), {args.patients} patients × {args.slices} slices at {args.size} px ({slices} files, RLE and JPEG 2000
lossless scanners included), best of {args.repeat} interleaved rounds on {os.cpu_count()} CPUs; load average {load:.1f} at the start,
{os.getloadavg()[0]:.1f} at the end.

| | slices/s | all rounds |
|---|---:|---|
| ours: default workers (patients in worker processes) | {ours:.0f} | {', '.join(f'{r:.0f}' for r in runs['ours'])} |
| peer: one process (`workers=1`) | {peer:.0f} | {', '.join(f'{r:.0f}' for r in runs['peer'])} |
| ratio | {ours / peer:.2f}× | |

Goal (issue 10): ≥ {GOAL:.0f} slices/s at 256 px on 2 cores: {verdict} ({ours:.0f}).
"""
    data = {"args": vars(args), "runs": runs, "ours": ours, "peer": peer, "ratio": ours / peer, "goal": GOAL}
    _results.record("phantom", data, md, "`.venv/bin/python benchmarks/phantom.py " + " ".join(sys.argv[1:]) + "`")
    print(md)


if __name__ == "__main__":
    main()
