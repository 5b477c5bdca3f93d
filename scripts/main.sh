#!/usr/bin/env bash
# The main job: install, get the TinySAM checkpoint, quantize it to real int8, serve the Label Studio ML backend.
#   TINYSAM_CHECKPOINT=/path/to/tinysam_42.3.pth bash scripts/main.sh   # use a local checkpoint (no download)
#   PORT=9090 WORKERS=1 THREADS=4 bash scripts/main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ckpt="${TINYSAM_CHECKPOINT:-}"
if [ -z "$ckpt" ]; then
  ckpt="$(tinysam weights fetch tinysam_42.3 | tail -n 1)"
fi
if [ -d "$ckpt" ]; then
  quantized="$ckpt"                       # already a quantized artifact
else
  quantized="weights/quantized/$(basename "${ckpt%.*}")-w8a8"
  [ -f "$quantized/quantization.json" ] || tinysam quantize --checkpoint "$ckpt" --out "$quantized"
fi
export TINYSAM_CHECKPOINT="$quantized"
echo "serving $TINYSAM_CHECKPOINT on port ${PORT:-9090}; connect Label Studio to http://<this host>:${PORT:-9090}"
exec tinysam serve --host 0.0.0.0 --port "${PORT:-9090}" --workers "${WORKERS:-1}" --threads "${THREADS:-4}"
