"""Run the benchmarks: every short one, and the command of every long one (``make bench``).

Each entry is one section of RESULTS.md and the command that measured it (its "Reproduce" line).
A benchmark writes ``results/<section>.json`` and rebuilds RESULTS.md; a failed one is reported
and the others still run.

Usage:
    .venv/bin/python benchmarks/run_all.py              # the short ones; prints the long ones' commands
    .venv/bin/python benchmarks/run_all.py --all        # every one (hours on 2 cores)
    .venv/bin/python benchmarks/run_all.py SECTION ...  # these sections, short or long
    .venv/bin/python benchmarks/run_all.py --list       # which is which, and each command
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = ".venv/bin/python"


@dataclass(frozen=True)
class Bench:
    section: str
    script: str
    args: str
    long: bool
    takes: str  # wall time of the recorded run (2 shared cores), where its JSON has it
    needs: str = ""  # what it needs besides `make setup`

    def command(self) -> str:
        return f"{PYTHON} benchmarks/{self.script}.py {self.args}".strip()


BENCHMARKS = [  # short ones first; "takes" is the recorded wall time where a recording has it
    Bench("phantom", "phantom", "", False, "not recorded"),
    Bench("lesion_kinds", "lesion_kinds", "", False, "not recorded"),
    Bench("roi_explain", "roi_explain", "", False, "not recorded"),
    Bench("source_check", "source_check", "", False, "not recorded"),
    Bench("roi_index", "roi_index", "--patients 4 --slices 16 --sizes 256,512 --workers 1", False, "not recorded"),
    Bench("fuzz", "fuzz", "--files 10000 --workers 2 --timeout 10", False, "7 s"),
    Bench("decode", "decode", "--patients 8 --slices 64 --size 256 --workers 1,2", False, "not recorded"),
    Bench("train", "train", "--size 64 --batch 32 --threads 1", False, "not recorded"),
    Bench("train_precision", "train", "--precision-compare --size 128 --batch 64 --epochs 2", False, "not recorded"),
    Bench("ray_index", "ray_index", "", False, "not recorded"),
    Bench("rest_fuzz", "rest_fuzz", "--bodies 20000 --threads 4", False, "108 s", "Orthanc with its Python plugin"),
    Bench("byo_encoder", "byo_encoder", "", False, "not recorded"),
    Bench("orthanc_load", "orthanc_load", "", False, "not recorded", "Orthanc with its Python plugin, dcmtk"),
    Bench("plugin_explain", "plugin_explain", "", False, "not recorded", "Orthanc with its Python plugin"),
    Bench("index_growth", "index", "--growth 1000000 --growth-queries 1000", False, "108 s"),
    Bench("index_open", "index", "--open-only --open-items 1000000", False, "build 57 s + opens; 4.4 GB RAM"),
    Bench("robustness", "robustness", "--patients 8 --slices 24 --size 128 --train-epochs 30 --train-patients 8", False, "135 s"),
    Bench("train_quality", "train_quality", "--epochs 20 --size 64 --batch 32 --lr 0.2 --crop-scale 0.2 --threads 1", False,
          "training 221 s"),
    Bench("adaptation", "adaptation", "--seeds 0,1,2 --trained-epochs 3 --timing-images 5000", True, "not recorded",
          "apt-get install mricron-data; PyPI for the nilearn wheel"),
    Bench("seeds", "seeds", "--patients 6 --slices 16 --minutes 2 --epochs 4 --explain-n 4 --relax-masks 200", True, "308 s"),
    Bench("soak", "soak", "", True, "325 s"),
    Bench("real_mr_defaults", "real_mr", "--epochs 30 --size 128 --batch-size 64 --precision fp32 --seeds 0 --record-as real_mr_defaults",
          True, "361 s", "apt-get install mricron-data; PyPI for the nilearn wheel"),
    Bench("prior_exam", "prior_exam", "--train-epochs 3", True, "training 578 s + the rest"),
    Bench("quality_epochs", "quality",
          "--budget-min 100 --max-epochs 10 --seeds 0,1,2 --only recipe:,paper: --rr-slices 8 --rr-masks 300 --record-as quality_epochs",
          True, "810 s"),
    Bench("index", "index", "--threshold --open-items 1000000", True, "not recorded; builds 1M items"),
    Bench("explain_224", "explain", "--size 224 --no-128", True, "not recorded"),
    Bench("search", "search", "--sizes 100000,1000000", True, "not recorded; builds 1M items"),
    Bench("search_tuning", "search", "--tuning-cost clusters,trained --sizes 1000000", True, "not recorded; builds 1M items"),
    Bench("search_shapes", "search", "--shapes clusters,trained,fitted --sizes 1000000", True, "not recorded; builds 1M items"),
    Bench("scale_10m", "scale", "--items 10000000", True, "about 85 min of building on 2 cores + 20 min of measuring; 46 GB of disk (float16 shards)"),
    Bench("sharded_50m", "scale", "--sharded --items 500000 --exact-items 200000", True, "not recorded; builds 4 compact + 5 exact indexes"),
    Bench("real_mr", "real_mr", "--epochs 30 --size 128 --seeds 0", True, "2445 s", "apt-get install mricron-data; PyPI for the nilearn wheel"),
    Bench("explain_quality", "explain_quality", "", True, "2454 s"),
    Bench("roi_open", "roi_open", "--items 20000,100000 --regions 64", True, "not recorded; builds 1.28M and 6.4M regions"),
    Bench("roi_real_mr", "roi_real_mr", "--seeds 0,1,2", True, "not recorded", "apt-get install mricron-data; PyPI for the nilearn wheel"),
    Bench("roi", "roi", "--patients 12 --slices 24 --seeds 0,1,2 --train-epochs 3 --scale-items 100000", True, "1843 s"),
    Bench("quality", "quality", "--budget-min 2.5 --seeds 0,1,2 --rr-slices 12 --rr-masks 400", True, "4410 s"),
    Bench("explain", "explain", "--size 128", True, "not recorded; 3000-mask references + the relax-xai peer"),
]


def describe(b: Bench) -> str:
    return f"{b.section:17} {'long ' if b.long else 'short'}  {b.command()}   [took: {b.takes}" + (f"; needs: {b.needs}]" if b.needs else "]")


def run(b: Bench) -> bool:
    print(f"bench: {b.section}: {b.command()}", flush=True)
    argv = [sys.executable, str(HERE / f"{b.script}.py"), *shlex.split(b.args)]
    return subprocess.call(argv, cwd=HERE.parent) == 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Run the benchmarks (the short ones by default).")
    ap.add_argument("sections", nargs="*", help="run these sections (short or long)")
    ap.add_argument("--all", action="store_true", help="run the long ones too")
    ap.add_argument("--list", action="store_true", help="print every benchmark, short or long, with its command; run nothing")
    args = ap.parse_args(argv)
    by_name = {b.section: b for b in BENCHMARKS}
    unknown = [s for s in args.sections if s not in by_name]
    if unknown:
        print(f"error: no benchmark section named {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(describe(b) for b in BENCHMARKS))
        return 0
    chosen = [by_name[s] for s in args.sections] if args.sections else [b for b in BENCHMARKS if args.all or not b.long]
    failed = [b.section for b in chosen if not run(b)]
    skipped = [b for b in BENCHMARKS if b not in chosen and b.long and not args.sections]
    if skipped:
        print("\nbench: long benchmarks not run (each one: the command below, from the repository root):")
        print("\n".join("  " + describe(b) for b in skipped))
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
