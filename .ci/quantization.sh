#!/usr/bin/env bash
# Dependencies of the quantization part (tinysam_backend/quantization, tests/quantization) in the active Python:
# ONNX, ONNX Runtime (CPU) and scikit-image (default calibration photos, parity images). Idempotent.
set -euo pipefail
PYTHON="${PYTHON:-python}"
if "$PYTHON" -c 'import onnx, onnxruntime, skimage' 2>/dev/null; then
  echo "quantization dependencies already installed"
  exit 0
fi
"$PYTHON" -m pip install --quiet "onnx>=1.17" "onnxruntime>=1.20" "scikit-image>=0.24"
