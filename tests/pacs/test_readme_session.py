"""The README's PACS session, taken from README.md and run verbatim against a real Orthanc.

It writes a phantom (48 files mixing RLE, JPEG 2000, JPEG-LS and uncompressed), exports the
default encoder to ONNX, writes the Orthanc configuration, starts Orthanc, sends the phantom with
``medcbir send`` and waits until everything is indexed. Then the viewer's own requests are made
with its default options: a search (the answers carry what a reader needs), a rendering, and an
explanation with the ONNX encoder, stored in the PACS.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import requests

from tests.conftest import require_binary

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- pacs-session -->"
URL = "http://127.0.0.1:8042"


def readme_session() -> str:
    """The bash block that follows the ``pacs-session`` mark in README.md."""
    text = README.read_text(encoding="utf-8")
    assert MARK in text, "README.md lost its PACS session"
    match = re.search(r"```bash\n(.*?)```", text[text.index(MARK):], flags=re.S)
    assert match, "no bash block after the PACS session mark"
    return match.group(1)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_readme_pacs_session_runs_verbatim(tmp_path):
    require_binary("Orthanc")
    session = readme_session()
    assert "medcbir send" in session and "storescu" not in session
    for port in (8042, 4242):
        assert _port_free(port), f"port {port} is taken: the README session needs Orthanc's default ports"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # the harness adds one line: the pid of the Orthanc the session started, printed however it ends
    proc = subprocess.run(["bash", "-e", "-c", "trap 'echo ORTHANC_PID=$!' EXIT\n" + session], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    pid = re.search(r"ORTHANC_PID=(\d+)", proc.stdout)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "sent 48 of 48 DICOM files to MEDCBIR@127.0.0.1:4242" in proc.stdout
        work = tmp_path / "day-one"
        files = sorted((work / "phantom").rglob("*.dcm"))
        assert len(files) == 48 and len({str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}) >= 3
        status = requests.get(f"{URL}/medcbir/status", timeout=30).json()
        assert status["indexed"] == 48 and status["queued"] == 0 and not status["skipped"]
        assert status["explain_methods"] == ["relax", "occlusion"]  # an ONNX encoder: no gradient methods offered

        # the viewer's search, default options: other series only, with what a reader needs
        query_file = files[17]
        sop = str(pydicom.dcmread(query_file, stop_before_pixels=True).SOPInstanceUID)
        instance = requests.post(f"{URL}/tools/lookup", data=sop, timeout=30).json()[0]["ID"]
        answer = requests.post(f"{URL}/medcbir/search", json={"instance": instance, "k": 5, "per_series": 0}, timeout=120).json()
        query_series = requests.get(f"{URL}/instances/{instance}/series", timeout=30).json()["ID"]
        assert len(answer["neighbours"]) == 5 and all(n["series"] != query_series for n in answer["neighbours"])
        for n in answer["neighbours"]:
            assert n["series_description"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", n["study_date"])
            assert isinstance(n["position_mm"], float) and 1 <= n["index_in_series"] <= n["series_slices"] == 12
            assert 0 <= n["percentile"] <= 100 and n["modality"] == "CT"
        assert answer["query_context"]["series_slices"] == 12

        # medcbir's rendering: the stored resolution, a PNG
        png = requests.get(f"{URL}/medcbir/render/{instance}", timeout=60)
        assert png.status_code == 200 and png.headers["Content-Type"].startswith("image/png")
        from PIL import Image
        import io

        assert Image.open(io.BytesIO(png.content)).size == (128, 128)

        # the viewer's "Explain", default options: RELAX with the ONNX encoder, stored in the PACS
        explained = requests.post(f"{URL}/medcbir/explain", timeout=600,
                                  json={"instance": instance, "k": 5, "exclude": "same-series", "method": "relax", "store": True})
        assert explained.status_code == 200, explained.text[:500]
        body = explained.json()
        assert [n["sop_instance_uid"] for n in body["neighbours"]] == [n["sop_instance_uid"] for n in answer["neighbours"]]
        assert len(body["stored"]["overlays"]) == 6 and "not evaluated" in body["status"]["text"]
        assert "not for diagnosis" in body["caveat"]
        overlay = body["stored"]["overlays"][1]["instance"]
        tags = requests.get(f"{URL}/instances/{overlay}/simplified-tags", timeout=30).json()
        assert int(tags["Rows"]) == int(tags["Columns"]) == 128  # the whole source frame
        refused = requests.post(f"{URL}/medcbir/explain", json={"instance": instance, "method": "gradcam"}, timeout=60)
        assert refused.status_code == 400 and "ExplainEncoder" in refused.json()["error"] and "--encoder" not in refused.json()["error"]
    finally:
        if pid:
            try:
                os.kill(int(pid.group(1)), signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _ in range(300):
            if _port_free(8042):
                break
            import time

            time.sleep(0.1)
