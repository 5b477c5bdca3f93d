"""`tinysam serve`: the Label Studio ML backend under gunicorn."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import Settings
from ..engines import add_engine_arguments, engine_env

APP_FACTORY = "tinysam_backend.label_studio.bridge:create_asgi_app"
CONFIG = "python:tinysam_backend.label_studio.gunicorn_conf"


def gunicorn_argv(host: str, port: int, workers: int, threads: int, timeout: int, log_level: str,
                  request_timeout: float = 5.0) -> list[str]:
    """The gunicorn command line `tinysam serve` runs: the asgi worker of gunicorn_conf, the app factory called with
    the threads per worker and the request deadline (gunicorn passes literal arguments to it)."""
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    app = f"{APP_FACTORY}(threads={int(threads)}, request_timeout={float(request_timeout)!r})"
    return [sys.executable, "-m", "gunicorn", "-c", CONFIG, "--bind", f"{bind_host}:{port}",
            "--workers", str(workers), "--timeout", str(timeout),
            "--log-level", log_level, "--access-logfile", "-", app]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ..checkpoint import resolve_checkpoint
    from .settings import LabelStudioSettings

    env = dict(os.environ)
    if args.checkpoint:
        env["TINYSAM_CHECKPOINT"] = args.checkpoint  # the workers read it through Settings.from_env()
    env.update(engine_env(args))  # --device / --engine / --precision reach the workers the same way
    settings = Settings.from_env(env)
    LabelStudioSettings.from_env(env)  # fail here, with the variable's name, rather than in every worker
    resolve_checkpoint(settings.checkpoint, settings)
    if not _has_module("gunicorn"):
        print("error: gunicorn is not installed (pip install 'tinysam-backend[labelstudio]')", file=sys.stderr)
        return 2
    argv = gunicorn_argv(args.host, args.port, args.workers, args.threads, args.timeout, args.log_level,
                         args.request_timeout)
    print(f"serving the Label Studio ML backend on http://{args.host}:{args.port} "
          f"({args.workers} worker(s) x {args.threads} threads; requests must arrive within "
          f"{args.request_timeout:g} s)", file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from e
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0.1 and 3600, got {text}")
    return value


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the Label Studio ML backend (gunicorn)",
                              description="Serve TinySAM as a Label Studio ML backend. Connect it in Label Studio: "
                                          "Project → Settings → Model → Connect Model, URL http://HOST:PORT, "
                                          "'Interactive preannotations' on.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=_positive, default=9090)
    p.add_argument("--workers", type=_positive, default=1,
                   help="worker processes; each loads the model and keeps its own embedding cache")
    p.add_argument("--threads", type=_positive, default=4,
                   help="prediction threads per worker (share its model and cache); requests are read by the worker's "
                        "event loop, not by these threads")
    p.add_argument("--request-timeout", type=_seconds, default=5.0,
                   help="seconds a request's headers may take to arrive after connecting, and its body after its "
                        "headers; a slower one is answered 408 and dropped (default 5)")
    p.add_argument("--timeout", type=_positive, default=120, help="seconds before an unresponsive worker is restarted")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--checkpoint", help="state dict or quantized dir (default: TINYSAM_CHECKPOINT)")
    add_engine_arguments(p)
    p.set_defaults(func=cmd_serve)
