"""nginx in front of two `tinysam serve` replicas with deploy/nginx-replicas.conf (Debian's nginx, no Docker).

Label Studio sends the image of a click inside the JSON body of /predict; the config's routing key is read from that
body, so every click on one image must reach the same replica, and each image must be encoded exactly once in the
whole set-up (on that replica) — what makes a second replica worth having for interactive labelling. The config
tested is the repository's file, with only its `server` and `listen` lines replaced and a header naming the upstream
added.

Needs Debian's nginx (`bash .ci/nginx.sh`): skipped without it, a failure under CI=true.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections import defaultdict

import pytest
import requests
from ls_helpers import (
    REPO,
    Nginx,
    free_port,
    keypoint,
    nginx_binary,
    predict_body,
    random_image,
    replica_config,
    require,
    serve,
)
from PIL import Image

N_CANDIDATES = 16  # images on disk; the test clicks on PER_REPLICA of them routed to each replica
PER_REPLICA = 2
CLICKS = 3


@pytest.fixture(scope="module")
def setup(parity_checkpoint, tmp_path_factory):
    binary = nginx_binary()
    require(binary is not None, "Debian's nginx is not installed (bash .ci/nginx.sh)")
    media = tmp_path_factory.mktemp("media")
    upload = media / "upload" / "1"
    upload.mkdir(parents=True)
    for i in range(N_CANDIDATES):
        Image.fromarray(random_image(500 + i, 48, 64)).save(upload / f"r{i}.png")
    env = {"LABEL_STUDIO_MEDIA_DIR": str(media)}
    logs = tmp_path_factory.mktemp("replicas")
    replicas = []
    try:
        for k in range(2):
            replicas.append(serve(parity_checkpoint, env, logs / f"replica-{k}.log", threads=1))
        port = free_port()
        servers = [r.url.split("//", 1)[1] for r in replicas]
        nginx = Nginx(binary, tmp_path_factory.mktemp("nginx"), replica_config(servers, port), port)
    except BaseException:
        for r in replicas:
            r.stop()
        raise
    yield nginx, replicas
    nginx.stop()
    for r in replicas:
        r.stop()


def _cache(replica) -> dict:
    return requests.get(replica.url + "/health", timeout=30).json()["stats"]["embedding_cache"]


def _probe(session, nginx, i: int) -> str:
    """Where the key of image i goes, found without encoding: the same task without a labelling config (400)."""
    body = predict_body(f"/data/upload/1/r{i}.png", None, task_id=100 + i)
    del body["label_config"]
    r = session.post(nginx.url + "/predict", json=body, timeout=60)
    assert r.status_code == 400 and "label_config" in r.text, r.text
    return r.headers["X-Upstream"]


def test_clicks_of_one_image_reach_one_replica(setup):
    nginx, replicas = setup
    addresses = [r.url.split("//", 1)[1] for r in replicas]
    session = requests.Session()
    # Encoding is the slow part: pick PER_REPLICA images whose key goes to each replica (16 candidates: the chance
    # that consistent hashing sends all of them to one replica is 2^-15).
    probed = {i: _probe(session, nginx, i) for i in range(N_CANDIDATES)}
    chosen = [i for a in addresses for i in [j for j, u in probed.items() if u == a][:PER_REPLICA]]
    assert len(chosen) == 2 * PER_REPLICA, f"routing of {N_CANDIDATES} images: {probed}"
    before = [_cache(r) for r in replicas]
    routes: dict[int, set[str]] = defaultdict(set)
    for k in range(CLICKS):  # every image once, then again: consecutive clicks of one image are never adjacent
        for i in chosen:
            body = predict_body(f"/data/upload/1/r{i}.png", [keypoint(20 + 25 * k, 50, 64, 48)], task_id=100 + i)
            r = session.post(nginx.url + "/predict", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["result"], "no region in the answer"
            routes[i].add(r.headers["X-Upstream"])
    split = {i: sorted(u) for i, u in routes.items() if len(u) != 1}
    assert not split, f"clicks of one image reached several replicas: {split}"
    assert {i: next(iter(u)) for i, u in routes.items()} == {i: probed[i] for i in chosen}
    # Each image encoded once, on the replica it was routed to; every later click of it was a cache hit there.
    for replica, start in zip(replicas, before):
        after = _cache(replica)
        assert after["misses"] - start["misses"] == PER_REPLICA, (replica.url, start, after)
        assert after["hits"] - start["hits"] == PER_REPLICA * (CLICKS - 1), (replica.url, start, after)


def test_requests_without_a_routing_key_are_spread(setup):
    """GET /health carries no body: the key is empty and nginx goes round-robin, so both replicas answer."""
    nginx, replicas = setup
    seen = {requests.get(nginx.url + "/health", timeout=30).headers["X-Upstream"] for _ in range(6)}
    assert seen == {r.url.split("//", 1)[1] for r in replicas}


def test_slow_client_is_held_by_nginx_not_by_a_replica(setup):
    """A client stalled inside its body reaches no replica: with a replica's one thread held it would not answer."""
    nginx, replicas = setup
    host, port = nginx.url.rsplit("//", 1)[1].split(":")
    stalled = []
    try:
        for _ in range(4):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000\r\n\r\n{\"tasks\": ")
            stalled.append(s)
        for replica in replicas:
            assert requests.get(replica.url + "/health", timeout=10).status_code == 200
        body = predict_body("/data/upload/1/r0.png", [keypoint(50, 50, 64, 48)], task_id=100)
        assert requests.post(nginx.url + "/predict", json=body, timeout=30).status_code == 200
    finally:
        for s in stalled:
            s.close()


def test_body_over_the_limit_is_refused_by_nginx(setup):
    nginx, _ = setup
    r = requests.post(nginx.url + "/predict", data=b" " * (17 * 1024 * 1024),
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "X-Upstream" not in r.headers  # answered by nginx, no replica involved


def test_docker_front_config_is_valid(tmp_path):
    """deploy/nginx.conf (the Docker image's front) passes `nginx -t`, with the shared settings it includes."""
    binary = nginx_binary()
    require(binary is not None, "Debian's nginx is not installed (bash .ci/nginx.sh)")
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    tmp_path.chmod(0o777)
    r = subprocess.run([binary, "-e", "stderr", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "deploy" / "nginx.conf")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr
