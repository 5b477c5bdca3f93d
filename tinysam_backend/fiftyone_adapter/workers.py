"""`tinysam fo-workers N`: N `fiftyone delegated launch` workers with the malloc settings TinySAM needs.

A sharded run (`num_shards` = N in the plugin's forms) is N queued delegated operations; N workers on the same
database run them side by side. FiftyOne starts its workers without our allocator variables, so each forward
pass would unmap and re-fault its buffers (see `tinysam_backend/allocator.py`); workers started here get them
in their environment, and `threads_per_worker` splits the cores between workers instead of oversubscribing them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..config import Settings

logger = logging.getLogger(__name__)


def worker_command() -> list[str]:
    """The `fiftyone delegated launch` command of this Python environment."""
    script = Path(sys.executable).with_name("fiftyone")
    if script.is_file():
        return [str(script), "delegated", "launch"]
    return [sys.executable, "-c", "import sys; from fiftyone.core.cli import main; sys.exit(main())",
            "delegated", "launch"]


def worker_env(threads_per_worker: int | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: this process's) with the allocator variables and, if given, the thread count."""
    from ..allocator import allocator_env

    env = allocator_env(environ)
    if threads_per_worker is not None:
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be an integer >= 1, got {threads_per_worker!r}")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads_per_worker)
    return env


def launch_workers(n: int, *, threads_per_worker: int | None = None, environ: dict[str, str] | None = None,
                   log_dir: Path | None = None) -> list[subprocess.Popen]:
    """Start `n` workers; their output goes to log_dir/worker-<k>.log when given. Stop them with `stop_workers`."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of workers must be an integer >= 1, got {n!r}")
    env = worker_env(threads_per_worker, environ)
    procs = []
    for k in range(n):
        out = subprocess.DEVNULL
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            out = open(Path(log_dir) / f"worker-{k}.log", "wb")  # noqa: SIM115 (owned by the child)
        procs.append(subprocess.Popen(worker_command(), env=env, stdout=out, stderr=subprocess.STDOUT))
        if out is not subprocess.DEVNULL:
            out.close()
    logger.info("started %d delegated workers: pids %s", n, [p.pid for p in procs])
    return procs


def stop_workers(procs: list[subprocess.Popen], timeout: float = 20.0) -> None:
    """Ctrl-C each worker (FiftyOne's launcher exits on it), then kill the ones still running after `timeout`."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cmd_fo_workers(args: argparse.Namespace, settings: Settings) -> int:
    """`tinysam fo-workers`: the workers read their own settings (FiftyOne starts them), `settings` is unused."""
    procs = launch_workers(args.workers, threads_per_worker=args.threads_per_worker)
    print(f"{len(procs)} delegated workers running (pids {[p.pid for p in procs]}); Ctrl-C stops them")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(procs)
    return max((p.returncode or 0) for p in procs) if any(p.returncode not in (0, None, -signal.SIGINT)
                                                          for p in procs) else 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("fo-workers", help="N `fiftyone delegated launch` workers with TinySAM's malloc settings")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="number of workers (default: cores)")
    p.add_argument("--threads-per-worker", type=int, help="torch threads per worker (default: torch's choice)")
    p.set_defaults(func=cmd_fo_workers)
