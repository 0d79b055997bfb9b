"""The five seed papers' protocols (``medcbir reproduce``) on one phantom v2 archive, tables into RESULTS.md.

Each reproduction trains what its paper trains within the same budget (``--minutes`` of wall time
and ``--epochs`` per training row), runs the paper's evaluation with medcbir's code, and its table
(our numbers beside the paper's cells: "see paper" where we do not quote a figure) goes into the
``seeds`` section of RESULTS.md; the first figure of each is copied to
``benchmarks/results/seeds/<paper>.png``, everything else stays in ``--work``.

Reproduce: ``.venv/bin/python benchmarks/seeds.py [--minutes 4 --epochs 12 --patients 8 --slices 24]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

from medcbir.reproduce import DEFAULT, PAPERS, reproduce  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=DEFAULT.minutes, help="wall-clock cap per training row")
    ap.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    ap.add_argument("--patients", type=int, default=DEFAULT.patients)
    ap.add_argument("--slices", type=int, default=DEFAULT.slices)
    ap.add_argument("--size", type=int, default=DEFAULT.size)
    ap.add_argument("--explain-n", type=int, default=DEFAULT.explain_n)
    ap.add_argument("--relax-masks", type=int, default=DEFAULT.relax_masks)
    ap.add_argument("--only", default="", help="comma-separated papers (default: all five)")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "seeds")
    args = ap.parse_args()

    budget = DEFAULT.with_(minutes=args.minutes, epochs=args.epochs, patients=args.patients, slices=args.slices, size=args.size,
                           explain_n=args.explain_n, relax_masks=args.relax_masks)
    papers = [p for p in (args.only.split(",") if args.only else PAPERS) if p]
    archive = args.work / f"archive-{budget.patients}-{budget.slices}-{budget.phantom_size}"
    figures = _results.RESULTS_DIR / "seeds"
    figures.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    runs = {}
    t0 = time.time()
    for paper in papers:
        out = args.work / paper
        if out.exists():
            shutil.rmtree(out)
        cpu0 = _cpu_seconds()
        try:
            result = reproduce(paper, archive, out, budget=budget, progress=lambda m: print(m, flush=True))
        except Exception as exc:  # noqa: BLE001 - one paper's failure is recorded, the others still run
            runs[paper] = {"error": f"{type(exc).__name__}: {exc}", "load_avg_after": os.getloadavg()}
            print(f"{paper} failed: {exc}", flush=True)
        else:
            shutil.copyfile(result["figures"][0], figures / f"{paper}.png")
            runs[paper] = {"seconds": round(result["seconds"], 1), "cpu_seconds": round(_cpu_seconds() - cpu0, 1), "markdown": result["markdown"], "figures": result["figures"],
                           "readme": result["readme"], "load_avg_after": os.getloadavg()}
            print(result["markdown"], flush=True)
        # recorded after every paper: an interrupted run keeps what it finished
        data = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "budget": budget.to_dict(), "runs": runs,
                "papers_asked": papers, "seconds": round(time.time() - t0, 1), "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
        _results.record("seeds", data, _markdown(data, budget), ".venv/bin/python benchmarks/seeds.py " + " ".join(sys.argv[1:]))


def _cpu_seconds() -> float:
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))


def _markdown(data: dict, budget) -> str:
    load = max([data["load_avg_before"][0], data["load_avg_after"][0]] + [r["load_avg_after"][0] for r in data["runs"].values()])
    lines = [
        f"The seed papers' protocols (`medcbir reproduce PAPER`) on one phantom v2 archive ({budget.patients} patients × {budget.slices} "
        f"slices, {budget.phantom_size} px). Budget: {budget.describe()}. **Measured while other jobs shared the 2 cores** (highest 1-min "
        f"load average seen: {load:.1f}), so the training rows got less CPU than their wall-clock budget suggests; every number is "
        "one run, one seed, on synthetic data — a check that each protocol runs and what it says at this budget, not the papers' results.",
        "The \"paper\" cells say \"see paper\" wherever we do not quote the paper's figure; rows marked \"not in paper\" are our baselines.",
        "",
    ]
    for paper, run in data["runs"].items():
        if "error" in run:
            lines += [f"### {paper}: failed", "", f"`{run['error']}`", ""]
            continue
        lines += [f"### {paper} ({run['seconds']:.0f} s wall, {run['cpu_seconds']:.0f} s CPU; figure `benchmarks/results/seeds/{paper}.png`)", "", run["markdown"].strip(), ""]
    missing = [p for p in data["papers_asked"] if p not in data["runs"]]
    if missing:
        lines.append(f"Not run yet in this recording (the run was stopped or is in progress): {', '.join(missing)}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
