"""A Ray command prints its result and nothing of Ray's own unless ``--verbose``.

``medcbir index --ray`` starts a local Ray runtime and runs Ray Data: without ``--verbose`` its
stdout and stderr hold no Ray log line (no ``INFO``, no "Started a local Ray instance", no worker
output); with ``--verbose`` (on ``search --ray``) Ray's INFO lines are shown, so the check can fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: What Ray's logs look like: a level word after a timestamp, the local-instance banner, or a
#: worker's output forwarded to the driver ("(pid=123)", "(raylet)", "(MapWorker ...)").
RAY_LINE = re.compile(r"\b(INFO|WARNING|DEBUG)\b|Started a local Ray instance|^\((pid=|raylet|\w+ pid=)", re.M)


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDCBIR_VERBOSE", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "medcbir", *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_ray_is_quiet_unless_verbose(tmp_path):
    pytest.importorskip("ray")
    from medcbir.imaging.phantom import make_archive

    make_archive(tmp_path / "archive", patients=2, slices=4, seed=9, size=32)
    quiet = _run("index", "archive", "--out", "index", "--ray", "--no-regions", "--no-progress", "--json", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert json.loads(quiet.stdout)["indexed"] == 8          # stdout: the result, and only it
    assert not RAY_LINE.search(quiet.stdout + quiet.stderr), (quiet.stdout + quiet.stderr)[-2000:]
    assert quiet.stderr.strip() == "", quiet.stderr[-2000:]

    # the same check on a Ray search with --verbose finds Ray's INFO lines
    query = str(sorted((tmp_path / "archive").rglob("*.dcm"))[0])
    loud = _run("--verbose", "search", "index", query, "-k", "2", "--ray", "--shards", "1", "--json", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert re.search(r"\bINFO\b", loud.stdout + loud.stderr), "--verbose shows Ray's INFO lines"
