#!/usr/bin/env bash
# The Docker image's command: nginx on :9090 in front of tinysam serve on 127.0.0.1:9091 (deploy/nginx.conf).
# Runs under tini (PID 1, `tini -g`: signals go to the whole process group, zombies are reaped). When either
# process exits, the other is stopped and the container exits with that status, so Docker's restart policy (or the
# orchestrator) starts it again; gunicorn itself restarts its workers.
# Extra arguments go to `tinysam serve` (e.g. --workers 2 --threads 2 --request-timeout 5).
set -euo pipefail
NGINX_PREFIX=${NGINX_PREFIX:-/tmp/nginx}
NGINX_CONF=${NGINX_CONF:-/app/deploy/nginx.conf}
mkdir -p "$NGINX_PREFIX"
tinysam serve --host 127.0.0.1 --port 9091 "$@" &
nginx -e stderr -g 'daemon off;' -p "$NGINX_PREFIX" -c "$NGINX_CONF" &
trap 'kill -TERM $(jobs -p) 2>/dev/null || true' TERM INT
status=0
wait -n || status=$?
kill -TERM $(jobs -p) 2>/dev/null || true
wait || true
exit "$status"
