"""gunicorn worker of `tinysam serve`: gunicorn's own `asgi` worker (asyncio) with a deadline on request headers.

gunicorn's asgi worker reads requests on its event loop, so a slow client costs a coroutine, not a thread; the app
(`bridge.WSGIBridge`) then reads the body under a deadline and runs Flask in a bounded pool. What the asgi worker
lacks is a bound on the *headers* of a connection's first request (later ones are bounded by the keep-alive timeout):
a client may send half a request line and wait forever, holding a file descriptor. `DeadlineProtocol` answers such a
connection 408 and closes it once the app's `request_timeout` has passed without complete headers.

gunicorn stays the process manager: the arbiter forks the workers, restarts any that die or stop answering, and runs
`post_worker_init` (the model loads there, after fork).

The protocol class is an internal of gunicorn's asgi worker (gunicorn >= 27, < 28 in pyproject.toml); the worker
checks at boot that it subclasses the class gunicorn uses, and tests/label_studio/test_ls_slow_clients.py checks the
deadline through a real server.
"""

from __future__ import annotations

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

# Used when the app does not say (an app other than bridge.WSGIBridge).
DEFAULT_REQUEST_TIMEOUT = 5.0

_REQUEST_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s")


class DeadlineProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 protocol, plus: the first request's headers must be complete within the worker's
    `request_timeout` seconds of the connection opening."""

    _header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.worker.loop.call_later(self.worker.request_timeout, self._headers_overdue)

    def _on_headers_complete(self):
        self._cancel_header_timer()
        return super()._on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self._closed or self._current_request is not None:
            return
        body = (b'{"status": 408, "error": "request_timeout", "message": "the request headers did not arrive within '
                + f"{self.worker.request_timeout:g}".encode() + b' s (tinysam serve --request-timeout)"}')
        self._safe_write(_REQUEST_TIMEOUT_RESPONSE % (len(body), body))
        self._keepalive_timeout()  # closes the transport and wakes the connection loop, which then ends


class DeadlineASGIWorker(gasgi.ASGIWorker):
    """gunicorn's asgi worker serving connections with `DeadlineProtocol`."""

    request_timeout = DEFAULT_REQUEST_TIMEOUT

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.request_timeout = float(getattr(self.asgi, "request_timeout", DEFAULT_REQUEST_TIMEOUT))

    def init_process(self) -> None:
        # gunicorn's asgi worker builds its connections with the module-level name `ASGIProtocol`; this process (a
        # forked worker) serves them with the subclass instead.
        if gasgi.ASGIProtocol is not ASGIProtocol and gasgi.ASGIProtocol is not DeadlineProtocol:
            raise RuntimeError("gunicorn's asgi worker no longer uses gunicorn.asgi.protocol.ASGIProtocol; "
                               f"this gunicorn ({_gunicorn_version()}) is not supported by tinysam serve")
        gasgi.ASGIProtocol = DeadlineProtocol
        super().init_process()


def _gunicorn_version() -> str:
    import gunicorn

    return gunicorn.__version__
