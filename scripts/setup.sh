#!/usr/bin/env bash
# Set up everything medcbir needs on a fresh Debian machine, idempotently:
#   system packages (dcmtk, dicom3tools, Orthanc + Python/DICOMweb plugins, Chromium + chromedriver) via apt-get when missing,
#   a virtual environment in .venv/ built on the system python3.11 (the one Orthanc's Python
#   plugin embeds), torch==2.13.0 (CPU build, no torchvision), and medcbir with its pins (and the
#   [hf] extra: transformers + safetensors, for users' own Hugging Face encoders).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
log() { printf 'setup: %s\n' "$*" >&2; }

# dicom3tools: dciodvfy validates the DICOM objects medcbir writes; chromium-driver drives the viewer test.
# orthanc-gdcm: Orthanc's previews of JPEG 2000 / JPEG-LS images (the viewer page's thumbnails).
SYSTEM_PACKAGES=(dcmtk dicom3tools orthanc orthanc-python orthanc-dicomweb orthanc-gdcm chromium chromium-driver python3.11-venv)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing system packages: ${missing[*]} (run as root, or install them with apt-get)"
        exit 1
    fi
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts an Orthanc service on install; the tests run their own on loopback ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    systemctl stop orthanc || true
fi

PY=/usr/bin/python3.11
[[ -x $PY ]] || PY="$(command -v python3.11)"
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $PY"
    "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
stamp=.venv/.medcbir-setup
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    log "installing Python packages into .venv"
    "$VPY" -m pip install -q --upgrade pip
    "$VPY" -m pip install -q torch==2.13.0
    "$VPY" -m pip install -q -e ".[dev,hf]"
    echo "$want" > "$stamp"
fi
if "$VPY" -c "import torchvision" 2>/dev/null; then
    log "torchvision is installed in .venv; medcbir does not use it and it breaks beside torch 2.13: removing"
    "$VPY" -m pip uninstall -y -q torchvision
fi
log "ready: $ROOT/.venv/bin/medcbir"
