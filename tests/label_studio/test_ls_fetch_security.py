"""The image fetcher as an attacker sees it: URL parser confusion must not move the API key or the connection to
another host, and a host that trickles bytes must not hold a thread past the fetch deadline.

Everything runs on loopback with real servers: a fake Label Studio (checks the `Token` header, answers redirects
on demand), a logging server on another port that records every connection and every byte it receives (it must
receive none), and a trickling server that sends one byte per second.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from tinysam_backend.label_studio.images import ImageFetcher, ImageFetchError
from tinysam_backend.label_studio.settings import LabelStudioSettings

KEY = "fedcba9876543210fedcba9876543210fedcba98"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class _Listener:
    """A TCP server that records every connection and every byte received, and answers nothing useful."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            while data := conn.recv(65536):
                with self._lock:
                    self.received += data
                if b"\r\n\r\n" in self.received:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PNG) + PNG)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class _LabelStudio(BaseHTTPRequestHandler):
    redirects: ClassVar[dict[str, str]] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ok = self.path.startswith("/data/upload/") and self.headers.get("Authorization") == f"Token {KEY}"
        body = PNG if ok else b"{}"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Trickle(BaseHTTPRequestHandler):
    """`/body`: headers at once, then one byte every 0.2 s; `/headers`: the status line and headers one byte every
    0.2 s. Either would take 40 s in full; every byte comes well within the 0.5 s read timeout."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        try:
            if self.path == "/headers":
                head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 30) for i in range(8))
                for b in head[:200]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            self.wfile.flush()
            for _ in range(200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def _start(handler) -> tuple[_QuietServer, int]:
    server = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture(scope="module")
def hosts():
    ls, ls_port = _start(_LabelStudio)
    trickle, trickle_port = _start(_Trickle)
    yield ls_port, trickle_port
    ls.shutdown()
    trickle.shutdown()


@pytest.fixture()
def logger_host():
    listener = _Listener()
    yield listener
    listener.close()


def _fetcher(ls_port: int, **kw) -> ImageFetcher:
    settings = LabelStudioSettings(label_studio_url=f"http://127.0.0.1:{ls_port}", label_studio_api_key=KEY,
                                   fetch_timeout=0.5, max_image_bytes=100_000, **kw)
    return ImageFetcher(settings, max_pixels=1_000_000)


def _confusing_urls(ls: int, other: int) -> list[str]:
    return [
        # urlsplit: Label Studio (:ls) with user info "127.0.0.1:other\"; urllib3: host 127.0.0.1:other.
        f"http://127.0.0.1:{other}\\@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other}\\\\@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other}%5C@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{ls}@127.0.0.1:{other}/data/upload/x.png",
        f"http://user:pw@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other}\t@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other}\n@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other} @127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{ls}\\.127.0.0.1:{other}/data/upload/x.png",
        f"http:\\\\127.0.0.1:{other}/data/upload/x.png",
        f"http://127.0.0.1:{ls}\\/data/upload/x.png",
        f"http://127.0.0.1:{other}#@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other}?@127.0.0.1:{ls}/data/upload/x.png",
        f"http://127.0.0.1:{other}\x00@127.0.0.1:{ls}/data/upload/x.png",
    ]


def test_the_reported_url_never_reaches_the_other_port(hosts, logger_host):
    ls_port, _ = hosts
    f = _fetcher(ls_port)
    url = f"http://127.0.0.1:{logger_host.port}\\@127.0.0.1:{ls_port}/data/upload/x.png"
    with pytest.raises(ImageFetchError) as info:
        f.read_bytes(f.locate(url))
    assert info.value.status in (403, 422), info.value
    assert "backslash" in str(info.value)
    time.sleep(0.2)
    assert logger_host.connections == 0 and logger_host.received == b""


@pytest.mark.parametrize("index", range(14))
def test_confusing_urls_never_reach_another_host(hosts, logger_host, index):
    ls_port, _ = hosts
    url = _confusing_urls(ls_port, logger_host.port)[index]
    f = _fetcher(ls_port)
    try:
        got = f.read_bytes(f.locate(url))
    except ImageFetchError as e:
        assert e.status in (403, 422), (url, e.status, str(e))
    else:  # only a URL every parser reads as Label Studio's may be fetched, and then from Label Studio
        assert got == PNG, url
    time.sleep(0.1)
    assert logger_host.connections == 0, url
    assert KEY.encode() not in logger_host.received, url


@pytest.mark.parametrize("index", range(14))
def test_redirects_to_confusing_urls_never_reach_another_host(hosts, logger_host, index):
    ls_port, _ = hosts
    target = _confusing_urls(ls_port, logger_host.port)[index]
    _LabelStudio.redirects[f"/data/upload/hop{index}.png"] = target
    f = _fetcher(ls_port)
    try:
        got = f.read_bytes(f.locate(f"/data/upload/hop{index}.png"))
    except ImageFetchError as e:
        assert e.status in (403, 422, 502), (target, e.status, str(e))
    else:
        assert got == PNG, target
    time.sleep(0.1)
    assert logger_host.connections == 0, target
    assert KEY.encode() not in logger_host.received, target


def test_allowed_other_host_never_gets_the_key(hosts, logger_host):
    # Even a host on the allow list (here refused anyway: loopback is not public) never sees the key.
    ls_port, _ = hosts
    _LabelStudio.redirects["/data/upload/away.png"] = f"http://localhost:{logger_host.port}/x.png"
    f = _fetcher(ls_port, allowed_hosts=("localhost",))
    with pytest.raises(ImageFetchError, match="not a public address"):
        f.read_bytes(f.locate("/data/upload/away.png"))
    assert KEY.encode() not in logger_host.received


def test_one_parse_for_decision_connection_and_message():
    from tinysam_backend.label_studio.images import parse_image_url

    parsed = parse_image_url("http://Example.COM:8080/a%20b/c.png?sig=secret")
    assert (parsed.scheme, parsed.host, parsed.port) == ("http", "example.com", 8080)
    assert parsed.request_target == "/a%20b/c.png?sig=secret"
    assert parsed.redacted() == "http://example.com:8080/a%20b/c.png"  # no query (signatures) in messages
    for bad, why in [("http://a\\b/x", "backslash"), ("http://u@h/x", "user info"), ("http://h/x y", "whitespace"),
                     ("http://h/\x7fx", "control"), ("http://h:99999/x", "port"), ("http://[::1/x", "")]:
        with pytest.raises(ImageFetchError, match=why):
            parse_image_url(bad)


@pytest.mark.parametrize("path", ["/body", "/headers"])
def test_trickling_host_is_cut_at_the_deadline(hosts, path):
    # fetch_timeout 0.5 s → overall deadline 1.5 s. Each byte arrives well within the read timeout, so only a
    # deadline enforced on the socket stops the fetch; the full stream would take 40 s.
    # The trickling host plays Label Studio here (trusted on loopback), so only the deadline is tested.
    _, trickle_port = hosts
    f = _fetcher(trickle_port)
    start = time.monotonic()
    with pytest.raises(ImageFetchError) as info:
        f.read_bytes(f.locate(path))
    elapsed = time.monotonic() - start
    assert elapsed < 20.0, elapsed  # ended long before the 40 s stream would (the deadline itself is 1.5 s)
    assert info.value.status == 504 and "deadline of 1.5 s" in str(info.value), str(info.value)


@pytest.mark.parametrize("url", ["http://user:pw@ls.internal:8080", "http://ls.internal:8080\\@other:1",
                                 "http://ls.internal:99999"])
def test_an_ambiguous_label_studio_url_fails_at_start_up(url):
    from tinysam_backend.label_studio.settings import SettingsError

    with pytest.raises(SettingsError, match="LABEL_STUDIO_URL"):
        LabelStudioSettings.from_env({"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": KEY})
