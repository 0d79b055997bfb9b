"""The five seed papers' protocols (``medcbir reproduce``) on one phantom v2 archive, tables into RESULTS.md.

Each reproduction trains what its paper trains within the same budget (``--minutes`` of wall time
and ``--epochs`` per training row), runs the paper's evaluation with medcbir's code, and its table
(our numbers beside the paper's cells: the paper's own figures as printed in its text, or "not
reported", each naming its source — the table or section of the paper) goes into the ``seeds``
section of RESULTS.md; the first figure of each is copied to
``benchmarks/results/seeds/<paper>.png``, everything else stays in ``--work``.

``--render`` trains nothing: it rebuilds the section from ``results/seeds.json`` with the paper
cells, sources and notes the modules have now (``medcbir/reproduce/<paper>.py``). Our numbers and
the run's notes are taken as recorded (from the recorded table, or, for a recording made before
tables were kept, from its Markdown, checked to print exactly as recorded).

Reproduce: ``.venv/bin/python benchmarks/seeds.py [--minutes 4 --epochs 12 --patients 8 --slices 24]``
(``--render`` to rebuild the tables only)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

from medcbir.reproduce import DEFAULT, PAPERS, Budget, paper_module, reproduce  # noqa: E402
from medcbir.reproduce.table import Table, _fmt  # noqa: E402


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
    ap.add_argument("--render", action="store_true", help="train nothing: rebuild the RESULTS.md section from results/seeds.json "
                                                          "with the modules' current paper cells")
    args = ap.parse_args()
    if args.render:
        render()
        return

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
                           "readme": result["readme"], "load_avg_after": os.getloadavg(),
                           "table": json.loads(Path(result["table_json"]).read_text())}
            print(result["markdown"], flush=True)
        # recorded after every paper: an interrupted run keeps what it finished
        data = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "budget": budget.to_dict(), "runs": runs,
                "papers_asked": papers, "seconds": round(time.time() - t0, 1), "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
        _results.record("seeds", data, _markdown(data, budget), ".venv/bin/python benchmarks/seeds.py " + " ".join(sys.argv[1:]))


def render() -> None:
    """Rebuild the seeds section from the recording: current paper cells, recorded numbers of ours."""
    saved = json.loads((_results.RESULTS_DIR / "seeds.json").read_text())
    data = saved["results"]
    budget = Budget(**{**data["budget"], "angles": tuple(data["budget"]["angles"])})
    for paper, run in data["runs"].items():
        if "error" in run:
            continue
        table = _empty_table(paper, budget)
        if "table" in run:
            ours = {r["row"]: r["ours"] for r in run["table"]["rows"]}
            notes = list(run["table"]["notes"])
        else:
            ours, notes = _parse_recorded(run["markdown"], table)
            run["table_from"] = "recorded Markdown (numbers of ours at its printed precision)"
        for row, cells in ours.items():
            for key, value in cells.items():
                table.set(row, key, value)
        table.notes = notes
        run["markdown"] = table.markdown()
        if "table" in run:
            run["table"] = table.to_dict()
    data["rendered_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _results.rerender("seeds", data, _markdown(data, budget))
    print(f"seeds section re-rendered from {_results.RESULTS_DIR / 'seeds.json'} (nothing trained)")


def _empty_table(paper: str, budget: Budget) -> Table:
    module = paper_module(paper)
    return module.empty_table(budget.angles) if paper == "saranchuk" else module.empty_table()


def _parse_recorded(markdown: str, table: Table) -> tuple[dict, list[str]]:
    """Our cells and the run's notes from a recorded table's Markdown; every cell must print back exactly as recorded."""
    lines = markdown.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
    arrow = {"high": " ↑", "low": " ↓", "": ""}
    want = ["row"] + [h for c in table.columns for h in (f"{c.header}{arrow[c.better]} ours", f"{c.header} paper")]
    head = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    if head != want:
        raise SystemExit(f"{table.paper}: the recorded table's columns {head} are not the module's {want}: re-run it")
    ours, end = {}, start + 2
    while end < len(lines) and lines[end].startswith("|"):
        cells = [c.strip() for c in lines[end].strip().strip("|").split("|")]
        row = cells[0]
        if row not in table.rows + table.extra_rows:
            raise SystemExit(f"{table.paper}: recorded row {row!r} is not a row of the module's table: re-run it")
        ours[row] = {}
        for i, c in enumerate(table.columns):
            text = cells[1 + 2 * i]
            value = _parse_cell(text)
            if _fmt(value) != text:
                raise SystemExit(f"{table.paper}: recorded cell {row!r} / {c.header} = {text!r} would print as {_fmt(value)!r}")
            ours[row][c.key] = value
        end += 1
    notes = []
    for line in lines[end:]:
        if line.startswith("Paper cells:"):
            break
        if line.startswith("- "):
            notes.append(line[2:])
    return ours, notes


def _parse_cell(text: str):
    if text == "–":
        return None
    if text in ("yes", "no"):
        return text == "yes"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


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
        "The \"paper\" cells hold the paper's own figures as printed in its text (its setting, not ours: each table's notes say how "
        "it differs), or \"not reported\" where the paper gives no such figure; each names its source — the paper's table, section "
        "or figure — as [n] under its table. Rows marked \"not in paper\" are our baselines.",
    ]
    if data.get("rendered_at"):
        lines.append(f"Tables re-rendered {data['rendered_at']} (`benchmarks/seeds.py --render`) with the modules' current paper cells; "
                     "our numbers and the runs' notes are as recorded at the time above — nothing was re-run.")
    lines.append("")
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
