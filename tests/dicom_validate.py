"""``dciodvfy`` (Debian dicom3tools) as a test oracle: the errors it reports about a DICOM file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_binary


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path`` (warnings are not errors)."""
    tool = require_binary("dciodvfy")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert any(line.strip() for line in lines), f"dciodvfy printed nothing for {path}"
    return [line for line in lines if line.startswith("Error")]
