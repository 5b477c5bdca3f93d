#!/usr/bin/env bash
# Install Debian's nginx (nginx-light) for the replica routing test (tests/label_studio/test_ls_replicas.py) and the
# deploy/ set-up. Idempotent: does nothing when an nginx binary is already there; skips (exit 0) without apt-get.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  echo "nginx already installed: $( (nginx -v || /usr/sbin/nginx -v) 2>&1)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not found: nginx not installed (the replica test skips, or fails under CI=true)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "not root and no sudo: nginx not installed" >&2; exit 0; fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
# The package starts a system nginx on port 80 where an init system runs; the tests start their own.
$SUDO systemctl disable --now nginx >/dev/null 2>&1 || $SUDO service nginx stop >/dev/null 2>&1 || true
echo "installed: $(/usr/sbin/nginx -v 2>&1)"
