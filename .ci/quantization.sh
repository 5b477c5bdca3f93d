#!/usr/bin/env bash
# Dependencies of the quantization part (tinysam_backend/quantization, tests/quantization) in the active Python:
# ONNX, ONNX Runtime (CPU), OpenVINO (the CPU engine, tinysam_backend/engines, tests/engines) and scikit-image
# (default calibration photos, parity images). Idempotent.
set -euo pipefail
PYTHON="${PYTHON:-python}"
if "$PYTHON" -c 'import onnx, onnxruntime, openvino, skimage' 2>/dev/null; then
  echo "quantization dependencies already installed"
  exit 0
fi
"$PYTHON" -m pip install --quiet "onnx>=1.17" "onnxruntime>=1.20" "openvino>=2026.4.1" "scikit-image>=0.24"
