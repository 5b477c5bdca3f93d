"""A harness for driving the Label Studio backend from outside, shared by the benchmarks and the tests: request
bodies as Label Studio sends them (keypoint / rectangle regions, `/predict` bodies), test images, `serve()` (starts
`tinysam serve` under gunicorn, the real CLI path, and waits for `/health`), nginx in front of replicas
(deploy/nginx-replicas.conf), clients that never finish their request (`SlowClients`), and a real Label Studio 1.23.2
started from its own venv (`.venv-ls`, installed by `.ci/label_studio.sh`, or `TINYSAM_LS_VENV`) in a throw-away data
directory, offline, with the settings it needs to accept an ML backend on 127.0.0.1 and a known legacy token.

Benchmarks import it as `from ls_harness import …` (benchmarks/ is on `sys.path` when they run as scripts);
tests/label_studio/ls_helpers.py re-exports it next to the pytest-only helpers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Person"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Person" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Person"/></RectangleLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keypoint(x: float, y: float, width: int, height: int, positive: bool | None = True, label: str = "Person",
             to_name: str = "image") -> dict:
    """A keypoint region as Label Studio's smart KeyPointLabels tool sends it (x, y in percent)."""
    region = {"original_width": width, "original_height": height, "image_rotation": 0,
              "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
              "from_name": "kp", "to_name": to_name, "type": "keypointlabels", "origin": "manual"}
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(x: float, y: float, w: float, h: float, width: int, height: int, label: str = "Person") -> dict:
    return {"original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
            "from_name": "rect", "to_name": "image", "type": "rectanglelabels", "origin": "manual"}


def predict_body(image_ref: str, regions: list[dict] | None, task_id: int = 1,
                 label_config: str = LABEL_CONFIG) -> dict:
    params = {"login": None, "password": None, "context": None if regions is None else {"result": regions}}
    return {"tasks": [{"id": task_id, "data": {"image": image_ref}}], "project": "1.1700000000",
            "label_config": label_config, "params": params}


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (blocks), different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.NEAREST))


class Served:
    """A running `tinysam serve` (gunicorn master + workers)."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.initial_workers: list[int] = []

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True,
                             check=False)
        return sorted(int(p) for p in out.stdout.split())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def serve(checkpoint: Path, env_extra: dict, log: Path, workers: int = 1, threads: int = 4,
          ready_timeout: float = 180.0, args: tuple[str, ...] = ()) -> Served:
    """Start `tinysam serve` and wait until /health says the model is ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "TINYSAM_LS_", "BASIC_AUTH"))}
    env.update({"TINYSAM_CHECKPOINT": str(checkpoint), **env_extra})
    cmd = [sys.executable, "-m", "tinysam_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--threads", str(threads), *args]
    handle = log.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tinysam serve exited with {proc.returncode}:\n{served.log_text()[-3000:]}")
        try:
            if requests.get(served.url + "/health", timeout=2).status_code == 200:
                return served
        except requests.RequestException:
            pass
        time.sleep(0.5)
    served.stop()
    raise RuntimeError(f"tinysam serve not ready after {ready_timeout} s:\n{served.log_text()[-3000:]}")


def nginx_binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def replica_config(servers: list[str], port: int) -> str:
    """deploy/nginx-replicas.conf with these upstream servers and listen address, plus an X-Upstream header."""
    text = (REPO / "deploy" / "nginx-replicas.conf").read_text()
    lines = re.findall(r"^\s*server backend-\d+:9090;\n", text, flags=re.MULTILINE)
    if len(lines) != 2:
        raise RuntimeError("deploy/nginx-replicas.conf: expected two `server backend-N:9090;` lines")
    text = text.replace(lines[0], "".join(f"        server {s};\n" for s in servers)).replace(lines[1], "")
    if "listen 9090;" not in text:
        raise RuntimeError("deploy/nginx-replicas.conf: expected `listen 9090;`")
    text = text.replace("listen 9090;", f"listen 127.0.0.1:{port};")
    text = text.replace("proxy_pass http://tinysam_replicas;",
                        "proxy_pass http://tinysam_replicas;\n            add_header X-Upstream $upstream_addr always;")
    return text


class Nginx:
    """nginx from `binary` with `config`, in `prefix` (deploy/nginx copied there), listening on 127.0.0.1:`port`."""

    def __init__(self, binary: str, prefix: Path, config: str, port: int) -> None:
        shutil.copytree(REPO / "deploy" / "nginx", prefix / "nginx")
        (prefix / "nginx.conf").write_text(config)
        prefix.chmod(0o777)  # worker processes run as nobody when the tests run as root
        self.prefix, self.binary, self.url = prefix, binary, f"http://127.0.0.1:{port}"
        self.log = (prefix / "nginx.log").open("w")
        check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration: {check.stderr}")
        self.proc = subprocess.Popen([binary, "-g", "daemon off;", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {(prefix / 'nginx.log').read_text()}") from None
                time.sleep(0.2)
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class SlowClients:
    """Connections that send a partial request, then one more byte every `interval` seconds (never completing)."""

    def __init__(self, url: str, n: int, interval: float = 0.5) -> None:
        host, port = url.rsplit("//", 1)[1].split(":")
        self.socks: list[socket.socket] = []
        self.replies: dict[int, bytes] = {}
        self.interval = interval
        self._stop = threading.Event()
        for i in range(n):
            s = socket.create_connection((host, int(port)), timeout=10)
            if i % 2 == 0:  # inside the headers: a header line that never ends
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: a")
            else:  # headers complete, inside the body
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n{\"tasks\": ")
            s.setblocking(False)
            self.socks.append(s)
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            for i, s in enumerate(self.socks):
                if i in self.replies:
                    continue
                self._collect(i, s)
                if i in self.replies:
                    continue
                try:
                    s.send(b"a" if i % 2 == 0 else b" ")
                except OSError:
                    self.replies.setdefault(i, b"")

    def _collect(self, i: int, s: socket.socket) -> None:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.replies[i] = data  # b"" = closed without an answer

    def answered(self) -> int:
        return len(self.replies)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for s in self.socks:
            s.close()


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
