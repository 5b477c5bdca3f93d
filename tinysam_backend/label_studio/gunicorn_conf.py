"""gunicorn settings for the Label Studio backend: `gunicorn -c python:tinysam_backend.label_studio.gunicorn_conf
'tinysam_backend.label_studio.bridge:create_asgi_app(threads=4, request_timeout=5.0)'` (what `tinysam serve` runs;
bind/workers come as flags, threads and the request deadline as arguments of the app factory).

Workers are gunicorn's asgi worker with a header deadline (`worker.DeadlineASGIWorker`): requests are read on the
worker's event loop and only complete ones reach the Flask app's thread pool (`bridge.WSGIBridge`), so slow clients
hold no prediction thread.

The model is loaded in each worker after fork (`post_worker_init`), never with `--preload`: torch in a forked
child of a process that already used it can hang, and CUDA breaks. torch's intra-op threads are sized so that
threads × workers matches the cores (or `TINYSAM_TORCH_THREADS`).
"""

from __future__ import annotations

import os

# asyncio workers reading every request, then a pool of threads (the app factory's `threads`) running the app: the
# threads of one worker share its model and its embedding cache.
worker_class = "tinysam_backend.label_studio.worker.DeadlineASGIWorker"
# Label Studio waits 100 s for /predict; a worker that stops answering its arbiter for longer is restarted.
timeout = 120
graceful_timeout = 30
keepalive = 5
# Header limits (gunicorn has none for bodies; the app caps them with MAX_CONTENT_LENGTH).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
preload_app = False
# No control socket (gunicorn >= 27): nothing uses it, and several servers on one machine would share its path.
control_socket_disable = True


def torch_threads_for(workers: int, configured: int, cores: int | None) -> int:
    """Intra-op threads per worker: the configured number, else the cores shared out between the workers."""
    if configured > 0:
        return configured
    return max(1, (cores or 1) // max(1, workers))


def post_worker_init(worker) -> None:
    import logging

    import torch

    from tinysam_backend.config import Settings

    # The package's loggers write where gunicorn's error log writes, at its level.
    package_logger = logging.getLogger("tinysam_backend")
    package_logger.handlers = list(worker.log.error_log.handlers)
    package_logger.setLevel(worker.log.error_log.level)
    package_logger.propagate = False
    n = torch_threads_for(worker.cfg.workers, Settings.from_env().torch_threads, os.cpu_count())
    torch.set_num_threads(n)
    worker.log.info("worker %s: torch threads %d; loading the model", worker.pid, n)
    app = getattr(worker, "asgi", None) or getattr(worker, "wsgi", None)
    flask_app = getattr(app, "application", app)  # bridge.WSGIBridge wraps the Flask app
    extensions = getattr(flask_app, "extensions", None)
    slot = extensions.get("tinysam") if isinstance(extensions, dict) else None
    if slot is not None:
        slot.start_loading()
