"""Connections that go exactly where a `ParsedURL` says, refuse private addresses when asked, and end at a deadline.

- The connection is made to the parsed host and port (no URL string is handed back to a parser).
- `public_only`: the address actually connected to is checked on the socket, so DNS rebinding cannot slip a
  private address in between a check and the connection; nothing is sent before the check.
- `Deadline`: the whole fetch (connect, status line, headers, body) ends at one instant. Per-read timeouts do not
  bound a host that sends a byte just before each timeout; a watchdog timer shuts the socket down at the deadline,
  which wakes the blocked read at once.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.response import BaseHTTPResponse

from .errors import ImageFetchError
from .urls import ParsedURL, is_public_address

READ_CHUNK = 64 * 1024


class RefusedAddress(OSError):
    """The connected address is not public."""


class _PublicOnlyMixin:
    def _new_conn(self):  # type: ignore[override]
        sock = super()._new_conn()
        try:
            peer = sock.getpeername()[0]
        except OSError:
            peer = ""
        if not is_public_address(peer):
            sock.close()
            raise RefusedAddress(f"{self.host} resolved to {peer or 'an unknown address'}, which is not a public "
                                 "address; only the configured Label Studio host may be on a private network")
        return sock


class PublicHTTPConnection(_PublicOnlyMixin, HTTPConnection):
    pass


class PublicHTTPSConnection(_PublicOnlyMixin, HTTPSConnection):
    pass


class Deadline:
    """One instant by which a fetch ends; `watch(conn)` shuts the connection's socket down when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def timeout(self, cap: float) -> float:
        """A per-operation timeout: `cap`, or what is left of the deadline if less. Raises once it has passed."""
        left = self.remaining()
        if left <= 0:
            self.expired = True
            raise ImageFetchError(f"the fetch took longer than its deadline of {self.seconds:g} s "
                                  "(3 × TINYSAM_LS_FETCH_TIMEOUT)", 504)
        return min(cap, left)

    def watch(self, conn: HTTPConnection) -> None:
        self.disarm()
        self._timer = threading.Timer(max(0.0, self.remaining()), self._cut, (conn.sock,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cut(self, sock: socket.socket | None) -> None:
        self.expired = True
        if sock is not None:
            try:  # the plain socket's shutdown, also for TLS: it wakes the reader without touching TLS state
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def error(self, url: ParsedURL) -> ImageFetchError:
        return ImageFetchError(f"fetching {url.redacted()} took longer than the deadline of {self.seconds:g} s "
                               "(3 × TINYSAM_LS_FETCH_TIMEOUT)", 504)


_NETWORK_ERRORS = (Urllib3HTTPError, http.client.HTTPException, OSError)


def request(url: ParsedURL, method: str, headers: dict[str, str], body: bytes | None, *, public_only: bool,
            timeout: float, deadline: Deadline, purpose: str = "fetch the image from"
            ) -> tuple[HTTPConnection, BaseHTTPResponse]:
    """Connect to `url`'s host and port, send one request, read the status and headers.

    Returns the connection (close it) and the response (body not read), with `deadline` watching the socket until
    `deadline.disarm()`. Raises ImageFetchError: 403 for a refused address, 504 past a timeout, 502 otherwise."""
    if url.scheme == "https":
        cls = PublicHTTPSConnection if public_only else HTTPSConnection
    else:
        cls = PublicHTTPConnection if public_only else HTTPConnection
    conn = cls(url.host, url.port, timeout=deadline.timeout(timeout))
    try:
        conn.connect()
        conn.timeout = deadline.timeout(timeout)  # each read from here on (urllib3 sets it on the socket)
        deadline.watch(conn)
        conn.request(method, url.request_target, body=body, headers=headers, preload_content=False)
        return conn, conn.getresponse()
    except ImageFetchError:
        deadline.disarm()
        conn.close()
        raise
    except _NETWORK_ERRORS as e:
        deadline.disarm()
        conn.close()
        raise _network_error(e, url, deadline, purpose) from e


def read_capped(resp: BaseHTTPResponse, url: ParsedURL, cap: int, deadline: Deadline) -> bytes:
    """The body, refused (413) above `cap` bytes (declared or read) and cut (504) at the deadline."""
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ImageFetchError(f"image at {url.redacted()} is {declared} bytes, more than the limit of {cap} "
                              "(TINYSAM_LS_MAX_IMAGE_BYTES)", 413)
    chunks = []
    total = 0
    try:
        while True:
            deadline.timeout(float("inf"))
            chunk = resp.read(READ_CHUNK)
            if deadline.expired:
                raise deadline.error(url)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise ImageFetchError(f"image at {url.redacted()} is larger than the limit of {cap} bytes "
                                      "(TINYSAM_LS_MAX_IMAGE_BYTES)", 413)
            chunks.append(chunk)
    except ImageFetchError as e:
        if e.status == 504:
            raise deadline.error(url) from None
        raise
    except _NETWORK_ERRORS as e:
        raise _network_error(e, url, deadline, "read the image from") from e
    return b"".join(chunks)


def _network_error(e: BaseException, url: ParsedURL, deadline: Deadline, purpose: str) -> ImageFetchError:
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, RefusedAddress):
        return ImageFetchError(str(reason), 403)
    if deadline.expired:
        return deadline.error(url)
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(e).lower():
        return ImageFetchError(f"timed out trying to {purpose} {url.redacted()}", 504)
    return ImageFetchError(f"could not {purpose} {url.redacted()}: {type(e).__name__}", 502)
