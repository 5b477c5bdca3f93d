"""The downloader against a real local HTTP server: progress, verification, atomic writes."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from tinysam_backend.errors import CheckpointError
from tinysam_backend.weights import WeightsEntry, fetch, lookup, read_manifest


class _TruncatingHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path.startswith("/truncated"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(_TruncatingHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _entry(url: str, payload: bytes | None = None, sha: bool = True) -> WeightsEntry:
    digest = hashlib.sha256(payload).hexdigest() if (payload is not None and sha) else None
    return WeightsEntry("x", "x.pth", url, "vit_t", size=None if payload is None else len(payload), sha256=digest)


def test_manifest_lists_the_official_checkpoints():
    manifest = read_manifest()
    assert lookup("tinysam_42.3", manifest).url.endswith("/tinysam_42.3.pth")
    assert lookup("sam_vit_h_4b8939.pth", manifest).variant == "vit_h"
    with pytest.raises(CheckpointError, match="unknown checkpoint"):
        lookup("nope", manifest)


def test_download_verifies_and_writes_atomically(server, tmp_path):
    root, base = server
    payload = b"\x00checkpoint bytes" * 1000
    (root / "x.pth").write_bytes(payload)
    cache = tmp_path / "cache"
    path = fetch(_entry(f"{base}/x.pth", payload), cache, progress=False)
    assert path == cache / "x.pth" and path.read_bytes() == payload
    assert (cache / "x.pth.sha256").read_text().startswith(hashlib.sha256(payload).hexdigest())
    assert not list(cache.glob("*.part"))
    # present: no second download, even if the server lost the file
    (root / "x.pth").unlink()
    assert fetch(_entry(f"{base}/x.pth", payload), cache, progress=False) == path


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    root, base = server
    (root / "x.pth").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="SHA-256"):
        fetch(_entry(f"{base}/x.pth", b"tampered"), cache, sha256="0" * 64, progress=False)
    assert not (cache / "x.pth").exists() and not list(cache.iterdir())


def test_truncated_download_leaves_nothing(server, tmp_path):
    _, base = server
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError):
        fetch(_entry(f"{base}/truncated.pth"), cache, progress=False)
    assert not list(cache.iterdir())


def test_http_error_is_clear(server, tmp_path):
    _, base = server
    with pytest.raises(CheckpointError, match="failed"):
        fetch(_entry(f"{base}/missing.pth"), tmp_path / "c", progress=False)
