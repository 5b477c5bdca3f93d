"""Locating and fetching task images: Label Studio paths, local media, SSRF guards, caps and timeouts.

The fetches go to a small HTTP image host on 127.0.0.1 started here (redirects, slow and oversized bodies are
things a real Label Studio will not produce on demand). Token handling against the real Label Studio is in
test_ls_e2e_label_studio.py.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from tinysam_backend.errors import ImageError
from tinysam_backend.label_studio.images import (
    ImageFetcher,
    ImageFetchError,
    host_allowed,
    is_personal_access_token,
    is_public_address,
    locate_image,
)
from tinysam_backend.label_studio.settings import LabelStudioSettings

KEY = "0123456789abcdef0123456789abcdef01234567"


def _png(h=12, w=16, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jwt(payload: dict) -> str:
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


PAT = _jwt({"token_type": "refresh", "exp": 9999999999, "user_id": "1"})
ACCESS = _jwt({"token_type": "access", "exp": int(time.time()) + 300})


class _Handler(BaseHTTPRequestHandler):
    png = _png()
    seen: ClassVar[list] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/token/refresh/" and body.get("refresh") == PAT:
            return self._send(200, json.dumps({"access": ACCESS}).encode())
        return self._send(401, b"{}")

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        auth = self.headers.get("Authorization")
        if self.path.startswith("/data/upload/"):
            if auth not in (f"Token {KEY}", f"Bearer {ACCESS}"):
                return self._send(401, b"{}")
            return self._send(200, self.png)
        if self.path == "/open.png":
            return self._send(200, self.png)
        if self.path == "/hop":
            return self._send(302, headers={"Location": "/data/upload/1/a.png"})
        if self.path == "/to-metadata":
            return self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        if self.path == "/big":
            return self._send(200, b"x" * 300_000)
        if self.path == "/big-chunked":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while reading
            for _ in range(40):
                self.wfile.write(b"x" * 10_000)
            return None
        if self.path == "/slow":
            time.sleep(2.0)
            return self._send(200, self.png)
        if self.path == "/text":
            return self._send(200, b"<html>not an image</html>")
        return self._send(404, b"{}")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that time out on purpose break the pipe
        pass


@pytest.fixture(scope="module")
def host():
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _fetcher(url: str | None, key: str | None = KEY, **kw) -> ImageFetcher:
    settings = LabelStudioSettings(label_studio_url=url, label_studio_api_key=key, fetch_timeout=0.5,
                                   max_image_bytes=100_000, **kw)
    return ImageFetcher(settings, max_pixels=1_000_000)


def test_label_studio_path_with_legacy_token(host):
    f = _fetcher(host)
    loc = f.locate("/data/upload/1/a.png")
    assert str(loc.url) == host + "/data/upload/1/a.png" and loc.identity == str(loc.url)
    assert f.load(loc).shape == (12, 16, 3)
    assert _Handler.seen[-1] == ("/data/upload/1/a.png", f"Token {KEY}")


def test_personal_access_token_is_exchanged(host):
    assert is_personal_access_token(PAT) and not is_personal_access_token(KEY)
    f = _fetcher(host, key=PAT)
    assert f.read_bytes(f.locate(host + "/data/upload/1/a.png")) == _Handler.png
    assert _Handler.seen[-1][1] == f"Bearer {ACCESS}"


def test_wrong_token_is_a_clear_502(host):
    f = _fetcher(host, key="wrong")
    with pytest.raises(ImageFetchError, match="HTTP 401.*LABEL_STUDIO_API_KEY") as info:
        f.read_bytes(f.locate("/data/upload/1/a.png"))
    assert info.value.status == 502


def test_redirect_within_label_studio_keeps_the_token(host):
    f = _fetcher(host)
    assert f.read_bytes(f.locate(host + "/hop")) == _Handler.png


def test_redirect_to_another_host_is_refused(host):
    f = _fetcher(host)
    with pytest.raises(ImageFetchError, match="169.254.169.254.*TINYSAM_LS_ALLOWED_HOSTS") as info:
        f.read_bytes(f.locate(host + "/to-metadata"))
    assert info.value.status == 403


def test_other_hosts_need_the_allow_list(host):
    port = host.rsplit(":", 1)[1]
    f = _fetcher(host)
    with pytest.raises(ImageFetchError, match="neither Label Studio") as info:
        f.read_bytes(f.locate(f"http://localhost:{port}/open.png"))
    assert info.value.status == 403
    # Allowed by name, but it resolves to loopback: refused on the connected socket's address.
    f = _fetcher(host, allowed_hosts=("localhost",))
    with pytest.raises(ImageFetchError, match="not a public address") as info:
        f.read_bytes(f.locate(f"http://localhost:{port}/open.png"))
    assert info.value.status == 403
    # An allowed IP literal that is private is refused before connecting.
    f = _fetcher(None, allowed_hosts=("10.1.2.3",))
    with pytest.raises(ImageFetchError, match="not a public address"):
        f.read_bytes(f.locate("http://10.1.2.3/x.png"))


def test_refused_host_never_receives_a_request(host):
    # Same machine, other origin name: refused on the socket's address before any byte of the request (and so the
    # key, which only Label Studio's own origin ever gets) is sent.
    port = host.rsplit(":", 1)[1]
    f = _fetcher(host, allowed_hosts=("localhost",))
    before = len(_Handler.seen)
    with pytest.raises(ImageFetchError, match="not a public address"):
        f.read_bytes(f.locate(f"http://localhost:{port}/data/upload/1/a.png"))
    assert len(_Handler.seen) == before


def test_size_caps(host):
    f = _fetcher(host)
    with pytest.raises(ImageFetchError, match="more than the limit") as info:
        f.read_bytes(f.locate(host + "/big"))  # refused on Content-Length
    assert info.value.status == 413
    with pytest.raises(ImageFetchError, match="larger than the limit") as info:
        f.read_bytes(f.locate(host + "/big-chunked"))  # refused while reading
    assert info.value.status == 413


def test_timeout(host):
    f = _fetcher(host)
    start = time.monotonic()
    with pytest.raises(ImageFetchError, match="timed out") as info:
        f.read_bytes(f.locate(host + "/slow"))
    assert info.value.status == 504
    assert time.monotonic() - start < 1.8


def test_not_an_image(host):
    f = _fetcher(host)
    with pytest.raises(ImageError, match="not a readable image"):
        f.load(f.locate(host + "/text"))


@pytest.mark.parametrize("ref, message", [
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://example.com/a.png", "scheme 'ftp'"),
    ("s3://bucket/a.png", "scheme 's3'"),
    ("//evil.example/a.png", "not supported"),
    ("images/a.png", "not a Label Studio path"),
    ("/data/upload/1/a.png", "set LABEL_STUDIO_URL"),
    ("http:///nohost", "no host"),
    ("", "URL or path string"),
])
def test_unusable_references(ref, message):
    with pytest.raises(ImageFetchError, match=message):
        locate_image(ref, LabelStudioSettings())


def test_local_media_shortcut_and_traversal(tmp_path: Path):
    media = tmp_path / "media"
    (media / "upload" / "3").mkdir(parents=True)
    (media / "upload" / "3" / "a b.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    settings = LabelStudioSettings(media_dir=media, label_studio_url="http://ls:8080")
    loc = locate_image("/data/upload/3/a%20b.png", settings)
    assert loc.path == (media / "upload" / "3" / "a b.png").resolve()
    assert loc.identity.startswith("file://") and "mtime_ns=" in loc.identity
    # The same file through Label Studio's absolute URL is read from disk as well.
    assert locate_image("http://ls:8080/data/upload/3/a%20b.png", settings).path == loc.path
    # ../ out of the media directory is never read from disk: it goes to Label Studio, which refuses it.
    outside = locate_image("/data/upload/3/../../../secret.png", settings)
    assert outside.path is None and str(outside.url).startswith("http://ls:8080/")


def test_local_files_root(tmp_path: Path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "x.png").write_bytes(_png())
    settings = LabelStudioSettings(local_files_root=tmp_path)
    loc = locate_image("/data/local-files/?d=pics/x.png", settings)
    assert loc.path == (tmp_path / "pics" / "x.png").resolve()
    assert ImageFetcher(settings, 10**6).load(loc).shape == (12, 16, 3)


def test_host_allow_list_and_public_addresses():
    assert host_allowed("images.example.com", ("images.example.com",))
    assert host_allowed("a.cdn.example.com", ("*.example.com",))
    assert not host_allowed("example.com", ("*.example.com",))
    assert not host_allowed("evilexample.com", ("*.example.com",))
    assert not host_allowed("images.example.com.evil.net", ("images.example.com",))
    assert is_public_address("8.8.8.8") and is_public_address("2001:4860:4860::8888")
    for private in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1", "fc00::1",
                    "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "100.64.0.1", "not-an-ip"):
        assert not is_public_address(private), private
