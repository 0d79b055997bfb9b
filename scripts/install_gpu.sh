#!/usr/bin/env bash
# Install medcbir's GPU wheels into .venv, REPLACING the CPU ones.
#
# faiss-cpu/faiss-gpu and onnxruntime/onnxruntime-gpu install the same import names (`faiss`,
# `onnxruntime`); installed side by side (what `pip install .[gpu]` alone does) their files
# overwrite each other and whichever was unpacked last wins. So: install medcbir, remove the CPU
# wheels, then install the GPU ones (pins from pyproject.toml's `gpu` extra).
# Needs a CUDA machine with a CUDA build of torch; check it afterwards with
#   .venv/bin/python scripts/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -e .
"$PY" -m pip uninstall -y faiss-cpu onnxruntime
GPU_PINS=$("$PY" - <<'PYEOF'
import tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))
PYEOF
)
"$PY" -m pip install $GPU_PINS
"$PY" -c "from medcbir.device import wheel_conflicts; c = wheel_conflicts(); assert not c, c; print('gpu wheels installed:', '$GPU_PINS')"
