"""What a benchmark ran on: CPU model, cores, the SIMD flags that matter to torch, load average (printed first)."""

from __future__ import annotations

import os
import platform

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
