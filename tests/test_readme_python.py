"""The README's Python API block, taken from README.md and run as a script (decoding workers
import the script again: it must have its ``__main__`` guard)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- python-api-script -->"


def test_readme_python_snippet_runs_as_a_script(tmp_path):
    from medcbir.imaging.phantom import make_archive

    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text[text.index(MARK):], flags=re.S).group(1)
    assert 'if __name__ == "__main__":' in block
    summary = make_archive(tmp_path / "archive", patients=2, slices=10, seed=5, size=64)
    shutil.copyfile(sorted(summary.dicom_files)[3], tmp_path / "query.dcm")
    (tmp_path / "readme_api.py").write_text(block, encoding="utf-8")
    proc = subprocess.run([sys.executable, "readme_api.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    indexed, score, map_at_k, *_ = proc.stdout.split()
    assert int(indexed) == 20 and 0 < float(score) <= 1 and 0 <= float(map_at_k) <= 1
