"""Slow clients against the real server (`tinysam serve`, the parity checkpoint): they must hold no prediction thread.

64 connections each send part of a request and then trickle a byte now and then (half stop inside the headers, half
inside a JSON body), which keeps any per-read or idle timeout from firing. While they are open, `/health` and a click
on an image whose embedding is cached must still be answered; afterwards every slow connection must have been
answered 408 and closed by the server (`--request-timeout`). With the former gthread server, `--threads` such
connections stopped every request (issue 12, item 2). No latency is asserted here: see
benchmarks/label_studio_slow_clients.py for the figures.
"""

from __future__ import annotations

import time

import pytest
import requests
from ls_helpers import SlowClients, keypoint, predict_body, serve

SLOW_CLIENTS = 64
REQUEST_TIMEOUT = 12.0  # long enough that the slow clients are surely still open while the checks run
IMAGE = "/data/upload/1/img0.png"


@pytest.fixture(scope="module")
def server(parity_checkpoint, media_dir, tmp_path_factory):
    served = serve(parity_checkpoint, {"LABEL_STUDIO_MEDIA_DIR": str(media_dir)},
                   tmp_path_factory.mktemp("serve") / "gunicorn.log", threads=4,
                   args=("--request-timeout", str(REQUEST_TIMEOUT)))
    served.initial_workers = served.worker_pids()
    yield served
    served.stop()


def _click(server) -> requests.Response:
    return requests.post(server.url + "/predict", json=predict_body(IMAGE, [keypoint(40, 60, 64, 48)]), timeout=20)


def test_health_and_cached_click_answer_while_64_slow_clients_are_open(server):
    first = _click(server)
    assert first.status_code == 200, first.text  # the image is now in the embedding cache
    misses = requests.get(server.url + "/health", timeout=10).json()["stats"]["embedding_cache"]["misses"]
    slow = SlowClients(server.url, SLOW_CLIENTS)
    try:
        time.sleep(1.0)  # every slow client has sent its partial request and trickled at least once
        for _ in range(3):
            health = requests.get(server.url + "/health", timeout=10)
            assert health.status_code == 200 and health.json()["model_ready"] is True
            click = _click(server)
            assert click.status_code == 200, click.text
            assert click.json()["results"][0]["result"], "the click produced no region"
            assert click.json() == first.json()  # same click, same answer
        # Still open and unanswered while those requests were served (the deadline is REQUEST_TIMEOUT).
        assert slow.answered() == 0, slow.replies
        stats = requests.get(server.url + "/health", timeout=10).json()["stats"]["embedding_cache"]
        assert stats["misses"] == misses, "the clicks were not answered from the embedding cache"
    finally:
        slow.close()


def test_slow_clients_are_answered_408_and_dropped(server):
    slow = SlowClients(server.url, SLOW_CLIENTS)
    try:
        deadline = time.monotonic() + 4 * REQUEST_TIMEOUT + 30  # a bound for the test run, not a latency check
        while slow.answered() < SLOW_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.5)
        replies = dict(slow.replies)
    finally:
        slow.close()
    assert len(replies) == SLOW_CLIENTS, f"{SLOW_CLIENTS - len(replies)} slow connections were never dropped"
    for i, reply in replies.items():
        assert reply.startswith(b"HTTP/1.1 408 "), (i, reply[:200])
        assert b"--request-timeout" in reply, reply
    assert server.worker_pids() == server.initial_workers  # the worker is the same process
    log = server.log_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
