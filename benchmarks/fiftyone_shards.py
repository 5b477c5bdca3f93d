"""Sharded delegated runs: `auto_mask` with `num_shards` = W over W real `fiftyone delegated launch` workers.

Runs against its own MongoDB (FiftyOne's bundled `mongod`, a temporary directory, a free loopback port), never
the user's database. For each worker count W: start W workers (`tinysam fo-workers`' launcher: allocator
settings, cores split between workers), wait until they are ready, queue the run (W shard operations, or one
delegated operation for W = 1), and time it until every operation has finished. One sample is labelled before
the run, as a crashed earlier run would have left it, so each run also shows that shards resume.

    python benchmarks/fiftyone_shards.py --images 8 --workers 1,2 --checkpoint ../shared/parity/tinysam_random_weights.pth

`--json OUT` writes every operation's state, result and the worker that ran it (tests/fiftyone uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "@tinysam/tinysam"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mongod(dbpath: Path) -> tuple[subprocess.Popen, str]:
    import importlib.util

    # located without importing fiftyone: its configuration must first see FIFTYONE_DATABASE_URI
    package = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0])
    mongod = package / "db" / "bin" / "mongod"
    port = free_port()
    dbpath.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(mongod), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1",
                             "--nounixsocket"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"mongodb://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mongod exited with {proc.returncode}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mongod did not accept connections within 60 s")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set((re.search(r"flags\s*:\s*(.*)", text) or re.match("", "")).group(0).split())
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model.group(1) if model else '?'}; {os.cpu_count()} cores; flags {' '.join(wanted)}"


def wait_ready(logs: list[Path], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() and b"service running" in p.read_bytes() for p in logs):
            return
        time.sleep(0.5)
    raise RuntimeError(f"workers not ready after {timeout} s: {[p.read_text()[-500:] for p in logs if p.exists()]}")


def run_once(fo, workers: int, paths: list[str], checkpoint: str, params: dict, work: Path, env: dict) -> dict:
    import fiftyone.operators as foo
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    from tinysam_backend.fiftyone_adapter.workers import launch_workers, stop_workers

    ds = fo.Dataset(f"tinysam-shards-{workers}", overwrite=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    first = ds.first()
    first["auto"] = fo.Detections()  # left by an earlier, interrupted run
    first.save()
    log_dir = work / f"logs-{workers}"
    cores = os.cpu_count() or 1
    procs = launch_workers(workers, threads_per_worker=max(cores // workers, 1), environ=env, log_dir=log_dir)
    logs = [log_dir / f"worker-{k}.log" for k in range(workers)]
    try:
        wait_ready(logs)
        t0 = time.perf_counter()
        result = foo.execute_operator(f"{PLUGIN}/auto_mask", ctx={
            "dataset": ds, "view": ds.view(), "request_delegation": workers == 1,
            "params": {"label_field": "auto", "checkpoint": checkpoint, "num_shards": workers, **params}})
        if result.error:
            raise RuntimeError(result.error)
        ids = [result.result["id"]] if workers == 1 else result.result["operation_ids"]
        service = DelegatedOperationService()
        while True:
            ops = [service.get(ObjectId(i)) for i in ids]
            if all(op.run_state in ("completed", "failed") for op in ops):
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
    finally:
        stop_workers(procs)
    ran_by = {}
    for k, log in enumerate(logs):
        for op_id in re.findall(r"Running operation (\w+)", log.read_text(errors="replace")):
            ran_by[op_id] = k
    ds.reload()
    out = {
        "workers": workers, "seconds": seconds, "images": len(paths),
        "operations": [{"id": str(op.id), "state": op.run_state, "worker": ran_by.get(str(op.id)),
                        "result": op.result.result if op.result else None,
                        "error": op.result.error if op.result else None} for op in ops],
        "labelled": ds.count("auto"), "masks": ds.count("auto.detections"),
    }
    ds.delete()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="longest side of the images (pixels)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    parser.add_argument("--checkpoint", required=True, help="state dict or quantized artifact directory")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tinysam-shards-"))
    mongod, uri = start_mongod(work / "db")
    # this process and the workers use the private database; the checkout is the plugins directory
    env = {**os.environ, "FIFTYONE_DATABASE_URI": uri, "FIFTYONE_PLUGINS_DIR": str(REPO),
           "FIFTYONE_DATABASE_VALIDATION": "false", "FIFTYONE_DO_NOT_TRACK": "true",
           "FIFTYONE_SHOW_PROGRESS_BARS": "false"}
    os.environ.update(env)
    try:
        import fiftyone as fo

        sys.path.insert(0, str(Path(__file__).parent))
        from fiftyone_rss import make_images

        (work / "images").mkdir()
        paths = make_images(work / "images", args.images, args.size)
        # random-weight models give low predicted IoUs: permissive thresholds so that every image yields masks
        params = {"points_per_side": args.points_per_side, "pred_iou_thresh": -1.0, "stability_score_thresh": 0.0,
                  "high_score_thresh": 0.0, "box_nms_thresh": 1.0}
        runs = [run_once(fo, int(w), paths, args.checkpoint, params, work, env) for w in args.workers.split(",")]
    finally:
        mongod.terminate()
        mongod.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"CPU: {cpu_flags()}")
    print(f"auto_mask over {args.images} images (≤{args.size}px), points_per_side {args.points_per_side}, "
          f"checkpoint {args.checkpoint}; one sample already labelled")
    base = runs[0]["seconds"]
    print(f"{'workers':>7s} {'seconds':>8s} {'s/image':>8s} {'speed-up':>8s}  operations")
    for r in runs:
        ops = ", ".join(f"{o['state']} by worker {o['worker']}" for o in r["operations"])
        print(f"{r['workers']:7d} {r['seconds']:8.1f} {r['seconds'] / (r['images'] - 1):8.2f} "
              f"{base / r['seconds']:8.2f}  {ops}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
