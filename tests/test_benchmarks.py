"""The benchmark report: every script is run by `make bench` (or listed as long), every Reproduce
line runs from a fresh clone with options its script has, and RESULTS.md opens with a summary line
per section computed from its JSON."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all")
PAYLOADS = {p.stem: json.loads(p.read_text()) for p in sorted((BENCH / "results").glob("*.json"))}


def bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def options_of(script: str) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", (BENCH / f"{script}.py").read_text()))


def check_runs_from_a_fresh_clone(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/python", command
    script = re.fullmatch(r"benchmarks/(\w+)\.py", argv[1])
    assert script and script[1] in SCRIPTS, command
    assert not [a for a in argv[2:] if a.startswith("/")], f"a path of the machine it ran on: {command}"
    unknown = {a.split("=")[0] for a in argv[2:] if a.startswith("--")} - options_of(script[1])
    assert not unknown, f"{command}: {sorted(unknown)} not options of {script[1]}.py"


def test_make_bench_knows_every_benchmark_script():
    run_all = bench_module("run_all")
    assert {b.script for b in run_all.BENCHMARKS} == set(SCRIPTS)
    assert len({b.section for b in run_all.BENCHMARKS}) == len(run_all.BENCHMARKS)
    for b in run_all.BENCHMARKS:
        check_runs_from_a_fresh_clone(b.command())
        if b.section in PAYLOADS:  # make bench re-measures a section the way its Reproduce line says
            assert b.command() == bench_module("_results").portable(PAYLOADS[b.section]["command"]), b.section


@pytest.mark.parametrize("section", sorted(PAYLOADS))
def test_every_reproduce_line_runs_from_a_fresh_clone(section):
    check_runs_from_a_fresh_clone(bench_module("_results").portable(PAYLOADS[section]["command"]))


def test_portable_commands():
    portable = bench_module("_results").portable
    assert portable("`python benchmarks/x.py --a 1 `") == ".venv/bin/python benchmarks/x.py --a 1"
    assert portable("/usr/bin/python3 benchmarks/x.py --work /scratch/w --b 2") == ".venv/bin/python benchmarks/x.py --b 2"
    assert portable(".venv/bin/python benchmarks/x.py --work=/tmp/w") == ".venv/bin/python benchmarks/x.py"
    assert portable(".venv/bin/python benchmarks/x.py --work rel/w") == ".venv/bin/python benchmarks/x.py --work rel/w"


def test_every_section_has_a_summary_line_read_from_its_json():
    summary = bench_module("_summary")
    for section in bench_module("run_all").BENCHMARKS:
        if section.section in PAYLOADS:
            row = summary.line(PAYLOADS[section.section])
            assert "(no summary line" not in row and "(its JSON lacks" not in row, row
            assert re.search(r"\*\*met\*\*|\*\*missed\*\*|ran|beats", row), row
    unknown = summary.line({"benchmark": "new_one", "measured_at": "2030-01-01T00:00:00", "results": {"load_average": [1.5, 1.0, 0.5]}})
    assert "no summary line for this section yet" in unknown and "load 1.5" in unknown
    broken = summary.line({"benchmark": "decode", "measured_at": "2030-01-01T00:00:00", "results": {}})
    assert "its JSON lacks" in broken


def test_a_missed_goal_says_by_how_much():
    summary = bench_module("_summary")
    row = summary.line({"benchmark": "phantom", "measured_at": "2030-01-01T00:00:00",
                        "results": {"args": {"size": 256}, "ours": 80.0, "peer": 70.0, "goal": 100.0}})
    assert "**missed** (20 % short)" in row and "load not recorded" in row
