"""Run every benchmark in turn (each writes results/<name>.json and rebuilds RESULTS.md).

Usage: .venv/bin/python benchmarks/run_all.py [name ...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["decode", "phantom", "index", "search", "train", "explain", "orthanc_load"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    failed = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"bench: no benchmark named {name}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"bench: {name}", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
