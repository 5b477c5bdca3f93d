#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtual environment (default: .venv-ls at the repository root).
# Idempotent: does nothing when the right version is already there. The end-to-end test
# (tests/label_studio/test_e2e_label_studio.py) finds it at $TINYSAM_LS_VENV or .venv-ls.
set -euo pipefail

LS_VERSION="1.23.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TINYSAM_LS_VENV:-$ROOT/.venv-ls}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/label-studio" ] && \
   [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" = "$LS_VERSION" ]; then
  echo "label-studio $LS_VERSION already installed in $VENV"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
"$VENV/bin/python" -c "import label_studio, importlib.metadata as m; assert m.version('label-studio') == '$LS_VERSION'"
echo "label-studio $LS_VERSION installed in $VENV"
