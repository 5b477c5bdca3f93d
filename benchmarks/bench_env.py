"""What the benchmarks share: what a run ran on (CPU model, cores, the SIMD flags that matter to torch, load
average, printed first), median timings (alone or interleaved) and the IoU of two masks.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this directory is on `sys.path`: `from bench_env import …`.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def describe() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags] or ["(flags unknown)"]
    load = os.getloadavg()
    return (f"CPU: {model}; {os.cpu_count()} cores; flags: {' '.join(have)}; "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def median_time(fn: Callable[[], object], runs: int) -> float:
    """Median seconds of `runs` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each function, called in turns (after one warm-up call each), so that the machine's load
    hits all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of one size (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
