"""Slow clients against `tinysam serve` (not a test; run it by hand): /health and cached-click latency while N
connections hold partial requests and trickle a byte every 0.5 s (issue 12: target < 1 s with 64 of them).

    .venv/bin/python benchmarks/label_studio_slow_clients.py [--slow 64] [--threads 4] [--tries 20]

Starts one server (the parity checkpoint: TinySAM's architecture and cost), clicks once on an image so that its
embedding is cached, then measures /health and a click on that image, alternately, `--tries` times each: first with
no slow client, then with `--slow` of them open (half inside the headers, half inside a body; --request-timeout is set
long enough that they stay open during the measurement).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_env import describe
from ls_harness import SlowClients, keypoint, predict_body, random_image, serve


def measure(url: str, tries: int) -> tuple[list[float], list[float]]:
    health, click = [], []
    body = predict_body("/data/upload/1/img0.png", [keypoint(40, 60, 64, 48)])
    for _ in range(tries):
        t = time.perf_counter()
        assert requests.get(url + "/health", timeout=30).status_code == 200
        health.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert requests.post(url + "/predict", json=body, timeout=30).status_code == 200
        click.append(time.perf_counter() - t)
    return health, click


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {statistics.median(ms):7.1f} ms  p95 {float(np.percentile(ms, 95)):7.1f} ms  max {max(ms):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared" / "parity" / "tinysam_random_weights.pth"))
    parser.add_argument("--slow", type=int, default=64)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args()
    print(describe())
    tmp = Path(tempfile.mkdtemp(prefix="tinysam-slow-"))
    upload = tmp / "media" / "upload" / "1"
    upload.mkdir(parents=True)
    Image.fromarray(random_image(0, 48, 64)).save(upload / "img0.png")
    server = serve(Path(args.checkpoint), {"LABEL_STUDIO_MEDIA_DIR": str(tmp / "media")}, tmp / "gunicorn.log",
                   threads=args.threads, args=("--request-timeout", "600"))
    try:
        measure(server.url, 1)  # the image's embedding is now cached
        quiet = measure(server.url, args.tries)
        slow = SlowClients(server.url, args.slow)
        try:
            time.sleep(1.0)
            loaded = measure(server.url, args.tries)
            still_open = args.slow - slow.answered()
        finally:
            slow.close()
    finally:
        server.stop()
    print(f"tinysam serve, 1 worker x {args.threads} threads; {args.tries} tries each")
    print(f"{'':34s}{'/health':48s}cached click")
    print(f"{'no slow client':34s}{summary(quiet[0]):48s}{summary(quiet[1])}")
    print(f"{f'{args.slow} slow clients ({still_open} open)':34s}{summary(loaded[0]):48s}{summary(loaded[1])}")
    print(f"{args.slow} slow clients / none, p50: /health {statistics.median(loaded[0]) / statistics.median(quiet[0]):.2f}"
          f", click {statistics.median(loaded[1]) / statistics.median(quiet[1]):.2f}")
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
