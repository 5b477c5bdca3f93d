"""What an annotator waits for when a task opens, and the first click after `tinysam serve` starts (not a test).

    .venv/bin/python benchmarks/label_studio_task_open.py [--phase all|cold|open] [--before-tree DIR] [--repeat 3]
                                                          [--tasks 2] [--checkpoint PATH]

cold: start `tinysam serve` (parity checkpoint: TinySAM's architecture and cost), wait for /health 200, then time
    the first click on an image (fetch from disk + encode + decode) and the first click on a second image (the
    cost of one encode in a warm process). With `--before-tree DIR` (a checkout of another commit, e.g.
    `git archive <commit> | tar -x -C DIR`) the same is run from that tree first, so both show side by side.
open: start a real Label Studio 1.23.2 (.venv-ls) with its defaults ("Use predictions to prelabel tasks" on), and
    for TINYSAM_LS_PREANNOTATE=sync then background, a project with that backend and --tasks image tasks; open each
    task with `GET /api/tasks/<id>/` (what the labelling page loads; Label Studio calls /predict inside it when the
    task has no prediction) and time it, click once on it through Label Studio (`interactive-annotating`), and,
    in background mode, time until its prediction is stored in Label Studio. Everything-mode parameters are the
    defaults (32 points per side, hierarchical).

Prints the CPU flags, torch threads and load average. Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
from ls_harness import (
    LABEL_CONFIG,
    TOKEN,
    free_port,
    keypoint,
    predict_body,
    serve,
    start_label_studio,
    wait_for_prediction,
)

IMAGES = ["astronaut", "coffee", "chelsea", "rocket"]


def cpu_summary() -> str:
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ["avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile"]
    return f"{os.cpu_count()} cores, flags: {' '.join(f for f in wanted if f in flags)}"


def skimage_rgb(name: str) -> np.ndarray:
    import skimage.data

    from tinysam_backend.image_io import array_to_rgb

    return array_to_rgb(getattr(skimage.data, name)())


def serve_from(tree: Path, checkpoint: Path, env_extra: dict, log: Path, timeout: float = 300.0):
    """`tinysam serve` run from `tree` (its own code: `python -m` looks in the working directory first)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "TINYSAM_LS_"))}
    env.update({"TINYSAM_CHECKPOINT": str(checkpoint), **env_extra})
    handle = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tinysam_backend.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--threads", "4"], cwd=tree, env=env, stdout=handle,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"tinysam serve from {tree} exited:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"tinysam serve from {tree} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def click(url: str, name: str, image: np.ndarray, task_id: int) -> float:
    h, w = image.shape[:2]
    start = time.perf_counter()
    r = requests.post(url + "/predict", json=predict_body(f"/data/upload/1/{name}.png", [keypoint(45, 40, w, h)],
                                                          task_id=task_id), timeout=120)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"/predict answered {r.status_code}: {r.text[:300]}")
    return elapsed


def phase_cold(args, tmp: Path) -> None:
    media = tmp / "media"
    (media / "upload" / "1").mkdir(parents=True, exist_ok=True)
    images = {name: skimage_rgb(name) for name in IMAGES[:2]}
    for name, rgb in images.items():
        Image.fromarray(rgb).save(media / "upload" / "1" / f"{name}.png")
    trees = ([("before", Path(args.before_tree))] if args.before_tree else []) + [("this tree", REPO)]
    print(f"\ncold first click after `tinysam serve` reports ready (1 worker x 4 threads), {args.repeat} fresh "
          "server(s) per tree, trees alternating; median [min-max]:")
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in trees}
    for i in range(args.repeat):
        for label, tree in trees:
            proc, url, ready = serve_from(tree, Path(args.checkpoint), {"LABEL_STUDIO_MEDIA_DIR": str(media)},
                                          tmp / f"gunicorn-{label.replace(' ', '-')}-{i}.log")
            try:
                first = click(url, "astronaut", images["astronaut"], 1)
                second = click(url, "coffee", images["coffee"], 2)
            finally:
                stop(proc)
            runs[label].append((ready, first, second))
            print(f"  run {i + 1} {label}: ready after {ready:.1f} s, first click {first:.2f} s, first click on a "
                  f"second image {second:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"{'code':>12} {'ready after':>16} {'1st click, image 1':>20} {'1st click, image 2':>20}")
    for label, rows in runs.items():
        cols = [np.asarray(c) for c in zip(*rows)]
        print(f"{label:>12} " + " ".join(f"{np.median(c):>7.2f} [{c.min():.1f}-{c.max():.1f}]".rjust(w)
                                         for c, w in zip(cols, (16, 20, 20))))


def phase_open(args, tmp: Path) -> None:
    ls = start_label_studio(tmp)
    images = {name: skimage_rgb(name) for name in IMAGES[: args.tasks]}
    rows = []
    try:
        for mode in ("sync", "background"):
            env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": TOKEN, "TINYSAM_LS_PREANNOTATE": mode}
            served = serve(Path(args.checkpoint), env, tmp / f"gunicorn-{mode}.log")
            try:
                pid = ls.api("POST", "/api/projects/", 201, json={"title": f"open {mode}",
                                                                  "label_config": LABEL_CONFIG})["id"]
                for name, rgb in images.items():
                    buf = io.BytesIO()
                    Image.fromarray(rgb).save(buf, "PNG")
                    ls.api("POST", f"/api/projects/{pid}/import", 201,
                           files={"file": (f"{name}.png", buf.getvalue(), "image/png")})
                ml = ls.api("POST", "/api/ml/", 201, json={"url": served.url, "project": pid, "is_interactive": True,
                                                           "title": "TinySAM"})
                tasks = ls.api("GET", "/api/tasks/", params={"project": pid})["tasks"]
                for task in tasks:
                    h, w = np.asarray(images[next(n for n in images if n in task["data"]["image"])]).shape[:2]
                    start = time.perf_counter()
                    opened = ls.api("GET", f"/api/tasks/{task['id']}/", params={"project": pid})
                    opened_at = time.perf_counter()
                    open_s = opened_at - start
                    start = time.perf_counter()
                    answer = ls.api("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                                    json={"task": task["id"], "context": {"result": [keypoint(45, 40, w, h)]}})
                    click_s = time.perf_counter() - start
                    if "data" not in answer:
                        raise RuntimeError(f"click failed: {answer}")
                    stored = None
                    if mode == "background":
                        found = wait_for_prediction(ls, task["id"], ml["model_version"], 600)
                        stored = time.perf_counter() - opened_at if found else float("nan")
                    rows.append((mode, task["id"], open_s, len(opened["predictions"]), click_s, stored))
                    print(f"  {mode}: task {task['id']} opened in {open_s:.2f} s with {len(opened['predictions'])} "
                          f"prediction(s); click {click_s:.2f} s" +
                          (f"; prediction stored {stored:.1f} s after the open returned" if stored else ""),
                          flush=True)
            finally:
                served.stop()
    finally:
        ls.stop()
    print("\ntask open in Label Studio 1.23.2 (GET /api/tasks/<id>/ of a task with no prediction):")
    print(f"{'mode':>11} {'task':>5} {'open':>8} {'predictions':>12} {'1st click':>10} {'stored after':>13}")
    for mode, tid, open_s, n, click_s, stored in rows:
        print(f"{mode:>11} {tid:>5} {open_s:>7.2f}s {n:>12} {click_s:>9.2f}s "
              f"{'' if stored is None else f'{stored:.1f}s':>13}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["all", "cold", "open"], default="all")
    parser.add_argument("--before-tree", help="another checkout to run the cold phase from first")
    parser.add_argument("--repeat", type=int, default=3, help="fresh servers per tree in the cold phase")
    parser.add_argument("--tasks", type=int, default=2, choices=range(1, len(IMAGES) + 1))
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared" / "parity" / "tinysam_random_weights.pth"))
    args = parser.parse_args()
    import torch

    print(f"CPU: {cpu_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="tinysam-task-open-"))
    if args.phase in ("all", "cold"):
        phase_cold(args, tmp)
    if args.phase in ("all", "open"):
        phase_open(args, tmp)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
