"""Helpers of the Label Studio backend tests (imported by conftest.py and the test modules): Label Studio
request builders, test images, and `serve()`, which starts `tinysam serve` (gunicorn, the real CLI path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[2]

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Person"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Person" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Person"/></RectangleLabels>
</View>"""

# Random-weight models predict low IoUs and unstable masks: let everything-mode masks through its filters.
EVERYTHING_TEST_ENV = {"TINYSAM_LS_BATCH_POINTS_PER_SIDE": "4", "TINYSAM_LS_BATCH_PRED_IOU_THRESH": "0.0",
                       "TINYSAM_LS_BATCH_STABILITY_SCORE_THRESH": "0.0", "TINYSAM_LS_BATCH_HIGH_SCORE_THRESH": "0.12",
                       "TINYSAM_LS_BATCH_MIN_AREA": "0.0", "TINYSAM_LS_BATCH_MAX_REGIONS": "5"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (or fail under CI) when a required external resource is missing."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


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
