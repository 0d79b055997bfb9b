"""Fuzz walk at scale (issue 12, item 6): N mutated DICOM files through the walk, 0 crashes, 0 hangs.

The corpus is the CI fuzz test's (``tests/imaging/test_fuzz.py``: truncations, flipped bytes,
wrong element lengths, bogus transfer syntax UIDs, absurd Rows/Columns/NumberOfFrames, on small
real files in seven transfer syntaxes / photometric interpretations), generated with the same
mutators at 10,000 files instead of 1,100, and walked with 2 decoder processes and the walk's
per-file timeout. Counted:

- **crash**: the walk raising, a yielded item that is not a float32 image of its stated shape,
  or a decoder process dying (quarantined as ``corrupt`` / ``decoder process died``: the walk
  survives it, but a decoder died on a file);
- **hang**: a file quarantined as ``timeout`` (a decoder stuck for the whole per-file timeout)
  that times out again when walked alone with a 12× longer timeout (on a loaded machine a
  starved decoder can pass the timeout without hanging; both counts are reported);
- every file counted once as decoded or skipped with a known reason.

Usage::

    .venv/bin/python benchmarks/fuzz.py [--files 10000 --workers 2 --timeout 10]
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


def corpus(folder: Path, n: int, seed: int) -> Path:
    """``n`` mutated files in ``folder/files`` (the CI fuzz test's mutators and seed files)."""
    from tests.imaging.test_fuzz import write_corpus

    return write_corpus(folder, n, seed)


def run(files: int, workers: int, timeout: float, seed: int) -> dict:
    from medcbir.imaging import SKIP_REASONS, walk

    work = Path(tempfile.mkdtemp(prefix="medcbir-fuzz-"))
    try:
        t0 = time.monotonic()
        folder = corpus(work, files, seed)
        make_s = time.monotonic() - t0
        quarantine = work / "quarantine.log"
        seen = []
        bad_items, walk_error = 0, ""
        t0 = time.monotonic()
        items = 0
        try:
            w = walk(folder, workers=workers, timeout=timeout, quarantine=quarantine, on_file=lambda p, n, r: seen.append(r))
            for decoded in w:
                items += 1
                if decoded.image.dtype != np.float32 or decoded.image.shape != (decoded.meta.rows, decoded.meta.cols):
                    bad_items += 1
            report = w.report
        except Exception as exc:  # noqa: BLE001 - a crash of the walk itself is what is counted
            walk_error, report = f"{type(exc).__name__}: {exc}".splitlines()[0], None
        walk_s = time.monotonic() - t0
        lines = [line.split("\t") for line in quarantine.read_text().splitlines()] if quarantine.is_file() else []
        deaths = [f for f in lines if len(f) > 2 and "decoder process died" in f[2]]
        died = len(deaths)
        # keep what killed a decoder, to reproduce it (benchmarks/work is not committed)
        keep = HERE / "work" / "fuzz-deaths"
        for f in deaths:
            keep.mkdir(parents=True, exist_ok=True)
            if Path(f[0]).is_file():
                shutil.copy(f[0], keep / Path(f[0]).name)
        timed_out = [Path(f[0]) for f in lines if len(f) > 1 and f[1] == "timeout"]
        hangs = _confirmed_hangs(timed_out, work / "again", timeout * 12) if timed_out else 0
        skipped = dict(report.skipped) if report else {}
        decoded_files = report.decoded_files if report else 0
        accounted = report is not None and report.files == files == len(seen) and decoded_files + sum(skipped.values()) == files
        return {
            "files": files, "workers": workers, "timeout_s": timeout, "seed": seed,
            "decoded_files": decoded_files, "items": items, "skipped": skipped,
            "crashes": int(bool(walk_error)) + bad_items + died, "walk_error": walk_error, "bad_items": bad_items,
            "decoder_deaths": died, "deaths": [{"file": Path(f[0]).name, "detail": f[2]} for f in deaths],
            "timeouts_in_walk": len(timed_out), "hangs": hangs, "every_file_accounted": bool(accounted),
            "unknown_reasons": sorted(set(skipped) - set(SKIP_REASONS)), "make_s": make_s, "walk_s": walk_s,
            "files_per_s": files / walk_s if walk_s else 0.0,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _confirmed_hangs(paths: list[Path], folder: Path, timeout: float) -> int:
    """Files that time out again when walked alone with a 12× longer timeout (on a loaded machine
    a decoder starved of CPU can pass the walk's timeout without hanging)."""
    from medcbir.imaging import walk

    folder.mkdir()
    for path in paths:
        shutil.copy(path, folder / path.name)
    w = walk(folder, workers=1, timeout=timeout, quarantine=folder.parent / "again.log")
    for _ in w:
        pass
    return int(w.report.skipped.get("timeout", 0))


def markdown(r: dict, load: str) -> str:
    ok = r["crashes"] == 0 and r["hangs"] == 0 and r["every_file_accounted"] and not r["unknown_reasons"]
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(r["skipped"].items(), key=lambda kv: -kv[1]))
    return "\n".join([
        f"{r['files']:,} mutated DICOM files (the CI fuzz test's mutators: truncations, flipped bytes, wrong element lengths, "
        f"bogus transfer syntax UIDs, absurd Rows/Columns/NumberOfFrames; seed {r['seed']}) through the walk with "
        f"{r['workers']} decoder processes and a {r['timeout_s']:g} s per-file timeout. Load average: {load}.",
        "",
        "| check | result |",
        "|---|---|",
        f"| crashes (walk raised / bad item / decoder process died) | {r['crashes']} ({int(bool(r['walk_error']))} / {r['bad_items']} / {r['decoder_deaths']}) |",
        f"| hangs (files quarantined as `timeout` that time out again alone at 12× the timeout) | {r['hangs']} (of {r['timeouts_in_walk']} timeouts in the walk) |",
        f"| every file counted once, decoded or skipped with a known reason | {'yes' if r['every_file_accounted'] and not r['unknown_reasons'] else 'no'} |",
        f"| decoded files / items | {r['decoded_files']:,} / {r['items']:,} |",
        f"| skipped | {skipped} |",
        f"| walk time | {r['walk_s']:.0f} s ({r['files_per_s']:.0f} files/s) |",
        f"| **0 crashes, 0 hangs** | **{'met' if ok else 'missed'}** |",
    ] + ([""] + [f"Decoder died on `{d['file']}`: {d['detail']} (the walk replaced the process and went on; the file is kept "
                  "in `benchmarks/work/fuzz-deaths/`)." for d in r.get("deaths", [])] if r.get("deaths") else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0, help="per-file decode timeout of the walk (s)")
    ap.add_argument("--seed", type=int, default=20261123)
    args = ap.parse_args(argv)
    before = os.getloadavg()[0]
    r = run(args.files, args.workers, args.timeout, args.seed)
    load = f"{before:.1f} at start, {os.getloadavg()[0]:.1f} at end (2 cores shared with other jobs)"
    _results.record("fuzz", {**r, "load_average": load}, markdown(r, load),
                    f".venv/bin/python benchmarks/fuzz.py --files {args.files} --workers {args.workers} --timeout {args.timeout:g}")
    print(markdown(r, load))
    return 0 if r["crashes"] == 0 and r["hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
