"""The ASGI front of the Flask app: reads each whole request on the event loop, then runs the app in a thread pool.

A thread that reads a request from a socket can be held by a slow client for as long as that client likes; with
`--threads` such clients the old threaded server answered nothing, `/health` included. Here the event loop of the
worker (gunicorn's `asgi` worker, see `worker.py`) reads every request, however many are open at once, and only a
request that has fully arrived is handed to a thread of the pool:

- its body must arrive within `request_timeout` seconds of its headers, else it is answered 408 and the connection is
  closed (the headers themselves are held to the same deadline by `worker.DeadlineProtocol`);
- a body above `max_body_bytes` (declared or counted, chunked included) is answered 413 as soon as it is known;
- `threads` threads run the Flask app (prediction work); cheap GET endpoints (`/health`, `/livez`) get one thread of
  their own, so a readiness probe is answered while every prediction thread is busy.

The app and the model load nothing here: `create_asgi_app()` only wraps `app.create_app()`; the model is loaded in each
worker after fork (`gunicorn_conf.post_worker_init`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

# GET requests on these paths run on their own thread: they never wait behind predictions.
LIGHT_PATHS = ("/health", "/livez")
# After refusing a body, read (and drop) what the client is still sending for at most this long before the
# connection is closed: a client whose unread bytes meet a closed socket gets a reset instead of the answer.
DRAIN_SECONDS = 2.0


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class WSGIBridge:
    """ASGI application running a WSGI `application` once each request has been read whole.

    threads: size of the pool that runs the application (the worker's concurrent predictions).
    request_timeout: seconds a request body may take to arrive once its headers are in.
    max_body_bytes: bodies above are answered 413 without reaching the application.
    """

    def __init__(self, application, *, threads: int = 4, request_timeout: float = 5.0,
                 max_body_bytes: int = 16 * 1024 * 1024) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout}")
        self.application = application
        self.threads = threads
        self.request_timeout = float(request_timeout)
        self.max_body_bytes = int(max_body_bytes)
        self._pool: ThreadPoolExecutor | None = None
        self._light_pool: ThreadPoolExecutor | None = None

    # -- pools (created on first use, in the worker process) ---------------------------------------------------
    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tinysam-request")
            self._light_pool = ThreadPoolExecutor(1, thread_name_prefix="tinysam-probe")
        return self._pool, self._light_pool

    def shutdown(self) -> None:
        for pool in (self._pool, self._light_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    # -- ASGI --------------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not offered; the server refuses the handshake
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send, 413, self._too_large_message())
            await _drain(receive)
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.request_timeout)
        except asyncio.TimeoutError:
            await self._refuse(send, 408, f"the request body did not arrive within {self.request_timeout:g} s of its "
                                          "headers (tinysam serve --request-timeout)")
            return
        except _BodyTooLarge:
            await self._refuse(send, 413, self._too_large_message())
            await _drain(receive)
            return
        except _ClientGone:
            return
        pool, light_pool = self._pools()
        light = scope["method"] in ("GET", "HEAD") and scope["path"] in LIGHT_PATHS
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        status, headers, payload = await loop.run_in_executor(light_pool if light else pool, _call_wsgi,
                                                              self.application, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _read_body(self, receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _BodyTooLarge()
                parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _too_large_message(self) -> str:
        return f"request body larger than the limit of {self.max_body_bytes} bytes (TINYSAM_LS_MAX_BODY_BYTES)"

    async def _refuse(self, send, status: int, message: str) -> None:
        name = {408: "request_timeout", 413: "payload_too_large"}[status]
        body = json.dumps({"status": status, "error": name, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _drain(receive) -> None:
    """Read and drop the rest of a refused body for a short while (see DRAIN_SECONDS)."""

    async def discard() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(discard(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server's parser refuses a malformed length before the app is called
    return None


def _environ(scope: dict, body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of a fully read request. The body is de-chunked: CONTENT_LENGTH is its size."""
    root = scope.get("root_path", "")
    path = scope["path"]
    if root and path.startswith(root):
        path = path[len(root):]
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in ("content-length", "transfer-encoding") or "_" in name:
            continue  # the body is already de-chunked; underscores would alias dashed names in the environ
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            environ[key] = value
    return environ


def _call_wsgi(application, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run the WSGI application; return status, headers and the whole body."""
    started: list = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = application(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                written.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI application returned without calling start_response")
    status_line, headers = started
    body = b"".join(written)
    out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if not any(k == b"content-length" for k, _ in out):
        out.append((b"content-length", str(len(body)).encode()))
    return int(status_line.split(" ", 1)[0]), out, body


def create_asgi_app(threads: int = 4, request_timeout: float = 5.0) -> WSGIBridge:
    """The backend as an ASGI app (what `tinysam serve` runs under gunicorn's asgi worker, see worker.py)."""
    from .app import create_app
    from .settings import LabelStudioSettings

    ls_settings = LabelStudioSettings.from_env()
    app = create_app(ls_settings=ls_settings)
    return WSGIBridge(app, threads=threads, request_timeout=request_timeout, max_body_bytes=ls_settings.max_body_bytes)
