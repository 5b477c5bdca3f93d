"""glibc malloc settings for CPU inference: keep freed memory instead of handing it back to the kernel.

PyTorch's CPU kernels allocate and free large activation buffers on every forward (the TinyViT encoder: tens of
MiB per block). With glibc's defaults, blocks over the dynamic mmap threshold are mmap'ed and unmapped each
time, and the top of the heap is trimmed, so every forward pays for page faults on fresh zero pages: on the
2-core machines here, about a third of the encoder's time is spent in the kernel (`sys`), not in arithmetic.
Raising the mmap and trim thresholds lets malloc reuse the memory; `benchmarks/core_bench.py` prints the
encoder time with and without them, side by side.

These thresholds can only be raised past 32 MiB through the environment, read by glibc when a process
starts, so the command line re-executes itself once with them set (`reexec_with_tuned_allocator`); servers
started by `tinysam serve` inherit them. Processes we do not start (a FiftyOne App or delegated worker, a
notebook) get the run-time equivalent (`tune_in_process`: the threshold is capped at 32 MiB by glibc, so mmap is
switched off instead), or the variables of `ALLOCATOR_ENV` exported before they start. Set `TINYSAM_MALLOC_TUNING=0` to leave malloc alone.
Nothing happens at import; on a libc other than glibc every function here does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# The mmap threshold over any single buffer of a 1024-px forward, and a trim threshold that never trims:
# freed memory stays in the process for the next forward (resident memory grows by about one forward's peak).
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
}
_DISABLE = "TINYSAM_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_MALLOPT_MMAP_MAX = 32 << 20  # glibc refuses larger values from mallopt (HEAP_MAX_SIZE / 2 on 64-bit)


def _is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tuning_enabled(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(_DISABLE, "1").strip().lower() not in ("0", "false", "no", "off") and _is_glibc()


def allocator_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` with `ALLOCATOR_ENV` added where the variable is not already set (a user's value wins)."""
    env = dict(os.environ if environ is None else environ)
    if tuning_enabled(env):
        for key, value in ALLOCATOR_ENV.items():
            env.setdefault(key, value)
    return env


def is_tuned(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(key in env for key in ALLOCATOR_ENV)


def reexec_with_tuned_allocator() -> None:
    """Replace this process with itself, same command line, `ALLOCATOR_ENV` set; return if nothing to do.

    Call it first thing in a program's entry point, before heavy imports and before any work (the process is
    replaced: state is lost). Does nothing when tuning is off, already in effect, or not on glibc."""
    if not tuning_enabled() or is_tuned():
        return
    argv = list(getattr(sys, "orig_argv", []) or [])
    if not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], allocator_env())


def tune_in_process() -> bool:
    """The run-time part (`mallopt`): no mmap'ed blocks at all (M_MMAP_MAX 0: the threshold itself cannot be
    raised past 32 MiB at run time, and the encoder's larger buffers would be unmapped and re-faulted on every
    forward, ~50 k minor faults per segment-everything image), no trimming. True if applied."""
    if not tuning_enabled() or is_tuned():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MALLOPT_MMAP_MAX) == 1
    ok &= libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    ok &= libc.mallopt(_M_TOP_PAD, 256 << 20) == 1
    return bool(ok)
