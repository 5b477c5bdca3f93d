"""A real Label Studio 1.23.2 for the end-to-end tests and benchmarks: started from its own venv (`.venv-ls`,
installed by `.ci/label_studio.sh`, or `TINYSAM_LS_VENV`) in a throw-away data directory, offline, with the
settings it needs to accept an ML backend on 127.0.0.1 and a known legacy token."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests
from ls_helpers import REPO, free_port

TOKEN = "0123456789abcdef0123456789abcdef01234567"
STARTUP_TIMEOUT = 300

# No traffic off this machine: no PyPI version check, no analytics, no Sentry reports (what an offline install sets).
OFFLINE_ENV = {"LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
               "FRONTEND_SENTRY_DSN": ""}


def label_studio_executable() -> Path:
    return Path(os.environ.get("TINYSAM_LS_VENV", REPO / ".venv-ls")) / "bin" / "label-studio"


def label_studio_env(data: Path) -> dict[str, str]:
    """The environment Label Studio runs with: a first user with a legacy token, local ML backends allowed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "TINYSAM_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_USERNAME": "e2e@example.com",
        "LABEL_STUDIO_PASSWORD": "e2e-password-123", "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Needed for a backend on 127.0.0.1 (connecting it also creates a webhook, checked against SSRF rules).
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false", "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        **OFFLINE_ENV,
    })
    return env


class LabelStudio:
    """A running Label Studio and a requests session authenticated with the legacy token."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {TOKEN}"

    def api(self, method: str, path: str, expect: int = 200, **kw):
        r = self.session.request(method, self.url + path, timeout=150, **kw)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_label_studio(data: Path) -> LabelStudio:
    """Start Label Studio in `data` and wait until its API answers; RuntimeError with its log tail if it does not."""
    port = free_port()
    log = data / "label-studio.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([str(label_studio_executable()), "start", "--no-browser", "--internal-host",
                                 "127.0.0.1", "--port", str(port)], cwd=data, env=label_studio_env(data),
                                stdout=handle, stderr=subprocess.STDOUT)
    ls = LabelStudio(f"http://127.0.0.1:{port}", proc, log)
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() - start > STARTUP_TIMEOUT:
            ls.stop()
            raise RuntimeError(f"Label Studio not up after {STARTUP_TIMEOUT} s:\n{log.read_text()[-3000:]}")
        try:
            if ls.session.get(ls.url + "/api/projects/", timeout=5).status_code == 200:
                return ls
        except requests.RequestException:
            pass
        time.sleep(1)


def wait_for_prediction(ls: LabelStudio, task_id: int, model_version: str, timeout: float) -> dict | None:
    """Poll `GET /api/predictions/?task=<id>` until a prediction of `model_version` is there (None after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in ls.api("GET", "/api/predictions/", params={"task": task_id})
                 if p["model_version"] == model_version]
        if found or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(0.5)
