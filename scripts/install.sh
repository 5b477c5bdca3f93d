#!/usr/bin/env bash
# Install everything on a fresh machine (no GPU needed): the project venv with CPU torch and all front ends,
# FiftyOne with an embedded MongoDB that runs offline, and Label Studio (own venv, for the end-to-end tests).
# Idempotent: re-running only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[quant,labelstudio,dev]"
for part in .ci/quantization.sh .ci/fiftyone.sh .ci/label_studio.sh; do
  if [ -f "$part" ]; then bash "$part"; fi
done
# Debian's nginx for the replica routing test and deploy/ (only where apt-get is there; idempotent).
if command -v apt-get >/dev/null 2>&1 && [ -f .ci/nginx.sh ]; then bash .ci/nginx.sh; fi
echo "installed: $(python -c 'import torch, tinysam_backend; print("torch", torch.__version__, "tinysam-backend", tinysam_backend.__version__)')"
