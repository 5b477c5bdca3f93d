"""8 concurrent annotators through nginx (deploy/nginx-replicas.conf): 2 replicas x 1 thread vs 1 replica x 2 threads
(not a test; run it by hand; needs Debian's nginx: bash .ci/nginx.sh).

    .venv/bin/python benchmarks/label_studio_replicas.py [--annotators 8] [--clicks 15] [--think-ms 1000]

Both set-ups get the same 2 prediction threads in all (2 replicas x 1 thread against 1 replica x 2 threads: the
same cores, shared out differently; torch's intra-op threads are the cores shared out between the replicas,
TINYSAM_TORCH_THREADS) and the same nginx config, routing by the image URL read from the body.
Each annotator works on its own image (the 8 scikit-image photos of label_studio_load.py): one first click (fetch +
encode, reported apart; annotators open their tasks within one --think-ms), then, once every image is open,
`--clicks` warm clicks in objects of up to 4 points, looking at each mask 0.5-1.5 x
--think-ms before the next. Printed: p50/p95/max of the warm clicks side by side, the first clicks, the encodes per
replica (each image once in the whole set-up), and the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_env import describe
from label_studio_load import IMAGES, click_path, load_images, ref, regions_for
from ls_harness import Nginx, free_port, keypoint, nginx_binary, predict_body, replica_config, serve


def run(setup: str, replicas: int, threads: int, args, images, tmp: Path) -> dict:
    # torch's intra-op threads: the machine's cores shared out between the replicas (no oversubscription).
    env = {"LABEL_STUDIO_MEDIA_DIR": str(tmp / "media"), "TINYSAM_TORCH_THREADS": str(max(1, os.cpu_count() // replicas))}
    servers = [serve(Path(args.checkpoint), env, tmp / f"{setup}-{k}.log", threads=threads) for k in range(replicas)]
    port = free_port()
    prefix = tmp / f"nginx-{setup}"
    prefix.mkdir()
    nginx = Nginx(nginx_binary(), prefix, replica_config([s.url.split("//", 1)[1] for s in servers], port), port)
    first, warm, lock = [], [], threading.Lock()
    barrier = threading.Barrier(args.annotators)
    opened = threading.Barrier(args.annotators)

    def annotator(i: int) -> None:
        name = IMAGES[i % len(IMAGES)]
        h, w = images[name].shape[:2]
        session = requests.Session()
        pause = np.random.default_rng(1000 + i)
        barrier.wait()
        time.sleep(pause.uniform(0, args.think_ms / 1000))  # annotators do not open their tasks in the same instant
        start = time.perf_counter()
        r = session.post(nginx.url + "/predict", json=predict_body(ref(name), [keypoint(50, 50, w, h)], task_id=i),
                         timeout=300)
        assert r.status_code == 200, r.text
        with lock:
            first.append(time.perf_counter() - start)
        opened.wait()  # warm clicks start once every image is open (encoded): steady-state clicking
        for n, context in enumerate(click_path(np.random.default_rng(i), args.clicks)):
            time.sleep(pause.uniform(0.5, 1.5) * args.think_ms / 1000)
            start = time.perf_counter()
            r = session.post(nginx.url + "/predict", timeout=300,
                             json=predict_body(ref(name), regions_for(context, w, h), task_id=i))
            assert r.status_code == 200, r.text
            with lock:
                warm.append(time.perf_counter() - start)

    try:
        workers = [threading.Thread(target=annotator, args=(i,)) for i in range(args.annotators)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        encodes = [requests.get(s.url + "/health", timeout=30).json()["stats"]["embedding_cache"]["misses"]
                   for s in servers]
    finally:
        nginx.stop()
        for s in servers:
            s.stop()
    return {"first": first, "warm": warm, "encodes": encodes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared" / "parity" / "tinysam_random_weights.pth"))
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=15, help="warm clicks per annotator")
    parser.add_argument("--think-ms", type=float, default=1000.0)
    args = parser.parse_args()
    if nginx_binary() is None:
        print("nginx is not installed (bash .ci/nginx.sh)", file=sys.stderr)
        return 2
    print(describe())
    tmp = Path(tempfile.mkdtemp(prefix="tinysam-replicas-"))
    images = load_images(tmp / "media")
    results = {"2 replicas x 1 thread": run("two", 2, 1, args, images, tmp)}
    results["1 replica x 2 threads"] = run("one", 1, 2, args, images, tmp)
    ms = 1000.0
    print(f"{args.annotators} annotators, each on its own image, {args.clicks} warm clicks each, looking "
          f"{args.think_ms / 2000:.2f}-{1.5 * args.think_ms / 1000:.2f} s at each mask; nginx routing by image URL")
    print(f"{'':24s}{'warm p50':>10s}{'warm p95':>10s}{'warm max':>10s}{'first p50':>11s}{'first max':>11s}  encodes")
    for label, r in results.items():
        w, f = np.asarray(r["warm"]) * ms, np.asarray(r["first"]) * ms
        print(f"{label:24s}{np.median(w):8.1f}ms{np.percentile(w, 95):8.1f}ms{w.max():8.1f}ms"
              f"{np.median(f):9.0f}ms{f.max():9.0f}ms  {r['encodes']}")
    a, b = (results[k]["warm"] for k in results)
    print(f"2 replicas / 1 replica: warm p50 {statistics.median(a) / statistics.median(b):.2f}, "
          f"p95 {np.percentile(a, 95) / np.percentile(b, 95):.2f}")
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
