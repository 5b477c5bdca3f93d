"""Chunked request bodies through raw sockets against the real server (`tinysam serve`, the parity checkpoint).

A malformed chunk is answered 400 and a chunked body above TINYSAM_LS_MAX_BODY_BYTES is answered 413 as soon as the
limit is passed; nothing is logged as a crash (issue 12, item 6: the former server answered 500 with a traceback in
its log, and cut a 50 MB chunked body at 16 MiB to answer "not valid JSON").
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests
from ls_helpers import keypoint, predict_body, serve

IMAGE = "/data/upload/1/img1.png"
LIMIT = 16 * 1024 * 1024  # the default TINYSAM_LS_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def server(parity_checkpoint, media_dir, tmp_path_factory):
    served = serve(parity_checkpoint, {"LABEL_STUDIO_MEDIA_DIR": str(media_dir)},
                   tmp_path_factory.mktemp("serve") / "gunicorn.log", threads=2)
    served.initial_workers = served.worker_pids()
    yield served
    served.stop()


def _address(server) -> tuple[str, int]:
    host, port = server.url.rsplit("//", 1)[1].split(":")
    return host, int(port)


def _read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response (Content-Length framed) from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def _raw(server, payload: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(_address(server), timeout=60) as s:
        s.sendall(payload)
        return _read_response(s)


HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_valid_chunked_click_is_answered_like_a_plain_one(server):
    body = json.dumps(predict_body(IMAGE, [keypoint(30, 40, 64, 48)])).encode()
    status, _, answer = _raw(server, HEAD + _chunked(body, size=97))
    plain = requests.post(server.url + "/predict", data=body, headers={"Content-Type": "application/json"},
                          timeout=60)
    assert status == 200 and plain.status_code == 200
    assert json.loads(answer) == plain.json() and plain.json()["results"][0]["result"]


@pytest.mark.parametrize("name, chunks", [
    ("size-not-hex", b"zz\r\n{}\r\n0\r\n\r\n"),
    ("size-negative", b"-2\r\n{}\r\n0\r\n\r\n"),
    ("size-empty", b"\r\n{}\r\n0\r\n\r\n"),
    ("data-longer-than-size", b"2\r\n{}}}\r\n0\r\n\r\n"),
    ("bare-lf", b"2\n{}\n0\n\n"),
])
def test_malformed_chunks_get_400(server, name, chunks):
    status, _, body = _raw(server, HEAD + chunks)
    assert status == 400, (name, status, body)


def test_huge_declared_chunk_that_never_comes_is_refused(server):
    """A chunk size of 2^128 - 1 is valid syntax; the app only sees the bytes that arrive, so the answer is 408 once
    --request-timeout has passed (nginx in front answers 413 at once: deploy/nginx.conf)."""
    status, _, body = _raw(server, HEAD + b"ffffffffffffffffffffffffffffffff\r\n{}")
    assert status in (408, 413), (status, body)


def test_chunked_body_over_the_limit_gets_413(server):
    """A 50 MB chunked body: 413 naming the limit, without the server reading all of it first."""
    piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    total = 50
    sent = [0]

    with socket.create_connection(_address(server), timeout=60) as s:
        def send() -> None:
            try:
                s.sendall(HEAD + b"1\r\n[\r\n")
                for _ in range(total):
                    s.sendall(piece)
                    sent[0] += 1
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server stopped reading after its answer

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        status, _, body = _read_response(s)
        sender.join(timeout=60)
    assert status == 413, body
    message = json.loads(body)["message"]
    assert f"limit of {LIMIT} bytes" in message and "TINYSAM_LS_MAX_BODY_BYTES" in message


def test_declared_length_over_the_limit_gets_413_before_the_body(server):
    with socket.create_connection(_address(server), timeout=60) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (50 * 1000 * 1000))
        status, _, body = _read_response(s)  # answered with no body byte sent
    assert status == 413 and b"TINYSAM_LS_MAX_BODY_BYTES" in body


def test_nothing_was_logged_as_a_crash(server):
    # Runs last in this module: the cases above went through the same worker.
    assert requests.get(server.url + "/health", timeout=30).status_code == 200
    assert server.worker_pids() == server.initial_workers
    log = server.log_text()
    assert "Traceback" not in log and "[ERROR]" not in log and "Exception" not in log, log[-3000:]
