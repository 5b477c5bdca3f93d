"""Bad input through the HTTP API of the real server (`tinysam serve`: gunicorn, the parity checkpoint).

Each case: the status, a message that says what was wrong, and the server still answering afterwards; at the end
the gunicorn worker is the same process (nothing crashed it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from ls_helpers import (
    LABEL_CONFIG,
    SAME_ARITHMETIC_AS_PARITY_PREDICTOR,
    free_port,
    keypoint,
    predict_body,
    rectangle,
    serve,
)
from PIL import Image

MAX_BODY = 65536
GOOD = "/data/upload/1/img0.png"


@pytest.fixture(scope="module")
def server(parity_checkpoint, media_dir, tmp_path_factory):
    # A decompression bomb: 20000 × 20000 one-bit pixels compress to a small PNG.
    bomb = media_dir / "upload" / "1" / "bomb.png"
    if not bomb.exists():
        Image.new("1", (20000, 20000)).save(bomb, optimize=True)
    thin = media_dir / "upload" / "1" / "thin.png"  # 5000 × 1: above the 2048:1 aspect ratio the model can take
    if not thin.exists():
        Image.new("RGB", (5000, 1), (90, 90, 90)).save(thin)
    env = {"LABEL_STUDIO_MEDIA_DIR": str(media_dir), "TINYSAM_LS_MAX_BODY_BYTES": str(MAX_BODY),
           # Label Studio "down": files not in the media directory are fetched from a closed port.
           "LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}", "LABEL_STUDIO_API_KEY": "k" * 40,
           "TINYSAM_LS_FETCH_TIMEOUT": "2", **SAME_ARITHMETIC_AS_PARITY_PREDICTOR}
    served = serve(parity_checkpoint, env, tmp_path_factory.mktemp("serve") / "gunicorn.log", threads=2)
    served.initial_workers = served.worker_pids()
    yield served
    served.stop()


def _post(server, path: str, body, raw: bool = False) -> requests.Response:
    data = body if raw else json.dumps(body, allow_nan=True).encode()
    return requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=120)


def _context(*regions):
    return predict_body(GOOD, list(regions))


CASES = [
    # (id, path, body, raw, status, message)
    ("not-json", "/predict", b"{'tasks': [", True, 400, "not valid JSON"),
    ("empty-body", "/predict", b"", True, 400, "body is empty"),
    ("json-array", "/predict", [1, 2], False, 400, "expected a JSON object"),
    ("deep-nesting", "/predict", b"[" * 30000 + b"]" * 30000, True, 400, "not valid JSON"),
    ("body-over-cap", "/predict", b"{" + b" " * (MAX_BODY + 10) + b"}", True, 413, "TINYSAM_LS_MAX_BODY_BYTES"),
    ("no-tasks", "/predict", {"label_config": LABEL_CONFIG}, False, 400, "'tasks' must be a non-empty list"),
    ("task-not-object", "/predict", {"tasks": ["x"], "label_config": LABEL_CONFIG}, False, 400, "tasks[0] must be"),
    ("no-config", "/predict", {"tasks": [{"data": {"image": GOOD}}]}, False, 400, "label_config"),
    ("config-not-xml", "/predict", {**_context(keypoint(50, 50, 64, 48)), "label_config": "<View"}, False, 422,
     "not well-formed XML"),
    ("config-unknown-tags", "/predict", {**_context(keypoint(50, 50, 64, 48)),
                                         "label_config": "<View><Text name='t' value='$text'/></View>"}, False, 422,
     "no <Image> tag"),
    ("config-without-brush", "/predict", {**_context(keypoint(50, 50, 64, 48)),
                                          "label_config": "<View><Image name='image' value='$image'/></View>"},
     False, 422, "no BrushLabels"),
    ("config-entities", "/predict", {**_context(keypoint(50, 50, 64, 48)), "label_config":
                                     '<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">]><View>&a;</View>'}, False, 422, "DOCTYPE"),
    ("context-not-object", "/predict", {**predict_body(GOOD, None), "params": {"context": "click"}}, False, 400,
     "params.context"),
    ("context-only-brush", "/predict", _context({"type": "brushlabels", "value": {}}), False, 422,
     "no keypoint or rectangle region"),
    ("click-outside", "/predict", _context(keypoint(150, 20, 64, 48)), False, 422, "outside the image"),
    ("click-negative", "/predict", _context(keypoint(10, -0.5, 64, 48)), False, 422, "outside the image"),
    ("click-nan", "/predict", _context(keypoint(float("nan"), 20, 64, 48)), False, 422, "finite number"),
    ("click-string", "/predict", _context({**keypoint(10, 20, 64, 48), "value": {"x": "10", "y": 20}}), False, 422,
     "finite number"),
    ("box-outside", "/predict", _context(rectangle(101, 10, 5, 5, 64, 48)), False, 422, "outside the image"),
    ("size-missing", "/predict", _context({**keypoint(10, 20, 64, 48), "original_width": None}), False, 422,
     "original_width must be a positive integer"),
    ("size-absurd", "/predict", _context(keypoint(10, 20, 10**6, 10**6)), False, 422, "more than the limit"),
    ("unknown-image-tag", "/predict", _context(keypoint(10, 20, 64, 48, to_name="photo")), False, 422,
     "Image tags are"),
    ("task-without-image", "/predict", {**_context(keypoint(10, 20, 64, 48)), "tasks": [{"id": 3, "data": {}}]},
     False, 422, "no image URL under data.image"),
    ("missing-image", "/predict", predict_body("/data/upload/1/nothere.png", [keypoint(10, 20, 64, 48)]), False, 502,
     "could not fetch the image"),
    ("unreadable-image", "/predict", predict_body("/data/upload/1/broken.png", [keypoint(10, 20, 64, 48)]), False,
     422, "image"),
    ("pdf-not-accepted", "/predict", predict_body("/data/upload/1/doc.pdf", [keypoint(10, 20, 64, 48)]), False, 422,
     "accepted formats"),
    ("decompression-bomb", "/predict", predict_body("/data/upload/1/bomb.png", [keypoint(10, 20, 64, 48)]), False,
     422, "pixels"),
    ("ssrf-metadata", "/predict", predict_body("http://169.254.169.254/latest/meta-data/", [keypoint(1, 1, 4, 4)]),
     False, 403, "TINYSAM_LS_ALLOWED_HOSTS"),
    ("ssrf-file", "/predict", predict_body("file:///etc/passwd", [keypoint(1, 1, 4, 4)]), False, 422,
     "scheme 'file'"),
    # Issue 12: URL confusion, prompt cost, extreme aspect ratio, inflated sizes.
    ("url-backslash", "/predict", predict_body("http://127.0.0.1:8766\\@127.0.0.1:8765/data/upload/x.png",
                                                [keypoint(1, 1, 4, 4)]), False, 422, "backslash"),
    ("url-user-info", "/predict", predict_body("http://user:pw@127.0.0.1:8765/data/upload/x.png",
                                                [keypoint(1, 1, 4, 4)]), False, 422, "user info"),
    ("url-control-char", "/predict", predict_body("http://127.0.0.1:8766\t@127.0.0.1:8765/x.png",
                                                   [keypoint(1, 1, 4, 4)]), False, 422, "control character"),
    ("url-bad-port", "/predict", predict_body("http://127.0.0.1:99999/x.png", [keypoint(1, 1, 4, 4)]), False, 422,
     "cannot be parsed"),
    ("too-many-points", "/predict", _context(*[keypoint(1 + i % 98, 1 + i // 98, 64, 48) for i in range(100)]), False,
     422, "more than the limit of 64 per request (TINYSAM_LS_MAX_POINTS)"),
    ("too-many-regions", "/predict", _context(*[{"type": "choices"}] * 1001), False, 422, "1001 regions"),
    ("size-inflated", "/predict", _context(keypoint(10, 20, 6400, 4800)), False, 422, "decodes to 64x48"),
    ("aspect-5000x1", "/predict", predict_body("/data/upload/1/thin.png", [keypoint(50, 50, 5000, 1)]), False, 422,
     "aspect ratios above 2048:1"),
    ("setup-not-json", "/setup", b"nope", True, 400, "not valid JSON"),
    ("setup-bad-schema", "/setup", {"schema": "<View><Header value='x'/></View>"}, False, 422, "no <Image> tag"),
    ("train", "/train", {}, False, 501, "training is not offered"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(server, case):
    _, path, body, raw, status, message = case
    r = _post(server, path, body, raw)
    assert r.status_code == status, r.text[:500]
    answer = r.json()
    assert answer["status"] == status and message in answer["message"], answer
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_wrong_method_and_path(server):
    r = requests.get(server.url + "/predict", timeout=10)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = requests.post(server.url + "/nothing-here", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_good_click_after_the_corpus_and_same_worker(server, parity_predictor, media_dir):
    # Runs after the corpus above (pytest keeps the file's order).
    r = _post(server, "/predict", _context(keypoint(25, 75, 64, 48)))
    assert r.status_code == 200, r.text[:300]
    emb = parity_predictor.embed(media_dir / "upload" / "1" / "img0.png")
    masks, scores, _ = parity_predictor.predict(emb, np.array([[16.0, 36.0]]), np.array([1]))
    from tinysam_backend.label_studio.brush_rle import brush_rle_to_mask

    got = brush_rle_to_mask(r.json()["results"][0]["result"][0]["value"]["rle"], 48, 64)
    assert np.array_equal(got, masks[int(np.argmax(scores))])
    assert server.worker_pids() == server.initial_workers, "a gunicorn worker was replaced: something crashed it"
    assert server.proc.poll() is None
