"""Searches through the Orthanc plugin while an explanation runs vs on a quiet server.

A private Orthanc with the medcbir plugin indexes a small phantom archive; then
``/medcbir/search`` is timed (p50/p95 over ``--searches`` requests) on the quiet server and
while a RELAX explanation (``--masks`` masks, query + k neighbours) runs in the plugin's
explanation process. Goal (issue 12): p95 while explaining ≤ 2× the quiet p95. The peer is
the same server with no explanation running, measured in the same run (quiet rounds before
and after the busy one; the better quiet p95 is the reference).

Run: ``.venv/bin/python benchmarks/plugin_explain.py [--searches 60 --masks 1000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=60)
    parser.add_argument("--masks", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between searches")
    args = parser.parse_args(argv)

    from medcbir.imaging import Preprocessing
    from medcbir.imaging.phantom import make_archive
    from medcbir.pacs.orthanc_config import build_config, write_config
    from medcbir.pacs.orthanc_server import OrthancServer, free_port, storescu_commands
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medcbir-plugin-explain-") as tmp:
        tmp = Path(tmp)
        make_archive(tmp / "archive", patients=2, slices=20, seed=5, size=64)
        files = sorted((tmp / "archive").rglob("*.dcm"))
        encoder = str(save_checkpoint(tmp / "enc64.pt", new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), 64), seed=0)))
        config = build_config(tmp / "index", encoder, http_port=free_port(), dicom_port=free_port(),
                              storage=tmp / "storage", user="bench:bench-pw", batch_size=16, flush_seconds=0.5)
        config["Medcbir"]["SearchTimeout"] = 900.0  # a long explanation on a loaded machine
        server = OrthancServer(write_config(tmp / "orthanc.json", config), log_path=tmp / "orthanc.log")
        server.start(timeout=120)
        try:
            for cmd in storescu_commands(config["DicomPort"], files, aet="MEDCBIR"):
                subprocess.run(cmd, check=True, capture_output=True)
            while server.status()["indexed"] < len(files) or server.status()["queued"]:
                time.sleep(0.2)
            query = files[5].read_bytes()
            headers = {"Content-Type": "application/dicom", "X-Medcbir-K": "5"}
            instance = server.rest.lookup_sop(__import__("pydicom").dcmread(files[5], stop_before_pixels=True).SOPInstanceUID)

            def round_of(n: int, while_alive: threading.Thread | None = None) -> list[float]:
                out = []
                for _ in range(n):
                    if while_alive is not None and not while_alive.is_alive():
                        break
                    t0 = time.perf_counter()
                    resp = server.rest.post("/medcbir/search", data=query, headers=headers, timeout=120)
                    assert resp.status_code == 200, resp.text
                    out.append(1000 * (time.perf_counter() - t0))
                    time.sleep(args.interval)
                return out

            round_of(5)  # warm-up
            quiet_before = round_of(args.searches)
            explain_s: list[float] = []

            def explain() -> None:
                t0 = time.perf_counter()
                resp = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 3, "method": "relax",
                                                                  "n_masks": args.masks, "format": "json"}, timeout=900)
                assert resp.status_code == 200, resp.text
                explain_s.append(time.perf_counter() - t0)

            thread = threading.Thread(target=explain)
            thread.start()
            time.sleep(1.0)  # the explanation's forwards are under way
            busy = round_of(args.searches, while_alive=thread)
            thread.join()
            quiet_after = round_of(args.searches)
        finally:
            server.stop()
    load_after = os.getloadavg()

    def p(values, q):
        return float(np.percentile(values, q)) if values else float("nan")

    quiet_p95 = min(p(quiet_before, 95), p(quiet_after, 95))
    busy_p95 = p(busy, 95)
    ratio = busy_p95 / quiet_p95
    data = {"searches": args.searches, "masks": args.masks, "quiet_before_ms": quiet_before, "busy_ms": busy,
            "quiet_after_ms": quiet_after, "explain_s": explain_s, "quiet_p95_ms": quiet_p95, "busy_p95_ms": busy_p95,
            "ratio": ratio, "goal_ratio": 2.0, "loadavg_before": load_before, "loadavg_after": load_after}
    goal = "met" if ratio <= 2.0 else f"missed by {ratio - 2.0:.2f}"
    md = [f"`/medcbir/search` through a private Orthanc (40-instance phantom index, random ResNet-18 at 64 px, k=5, "
          f"one request every {int(args.interval * 1000)} ms) on the quiet server and while a RELAX explanation "
          f"({args.masks} masks, query + 3 neighbours; {explain_s[0]:.0f} s) runs in the plugin's explanation process; "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (2 CPUs shared with other engineers).", "",
          "| | searches | p50 ms | p95 ms |", "|---|---:|---:|---:|",
          f"| quiet, before | {len(quiet_before)} | {p(quiet_before, 50):.1f} | {p(quiet_before, 95):.1f} |",
          f"| while explaining | {len(busy)} | {p(busy, 50):.1f} | {busy_p95:.1f} |",
          f"| quiet, after | {len(quiet_after)} | {p(quiet_after, 50):.1f} | {p(quiet_after, 95):.1f} |",
          f"| **p95 ratio** busy / quiet (goal ≤ 2) | | | **{ratio:.2f}** ({goal}) |"]
    command = ".venv/bin/python benchmarks/plugin_explain.py " + " ".join(argv if argv is not None else sys.argv[1:])
    _results.record("plugin_explain", data, "\n".join(md), command.strip())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
