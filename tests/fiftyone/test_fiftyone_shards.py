"""Scale-out: a run split into two delegated shard operations, processed by two real `fiftyone delegated launch`
worker processes on one (private) MongoDB, through `benchmarks/fiftyone_shards.py`, which owns the database and
the workers and reports every operation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_two_workers_run_disjoint_shards_and_resume(fo, checkpoint, tmp_path):
    out = tmp_path / "shards.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fiftyone_shards.py"), "--images", "4",
                           "--workers", "2", "--points-per-side", "4", "--checkpoint", checkpoint, "--json", str(out)],
                          capture_output=True, text=True, check=False, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())
    ops = run["operations"]
    assert [op["state"] for op in ops] == ["completed", "completed"], [op["error"] for op in ops]
    assert sorted(op["worker"] for op in ops) == [0, 1]  # one shard in each worker process
    results = [op["result"] for op in ops]
    # 4 samples, one labelled beforehand: every sample in exactly one shard, the labelled one skipped
    assert sum(r["samples"] + r["skipped"] for r in results) == 4
    assert sum(r["skipped"] for r in results) == 1 and all(r["failed"] == [] for r in results)
    assert run["labelled"] == 4 and run["masks"] == sum(r["masks"] for r in results) > 0
