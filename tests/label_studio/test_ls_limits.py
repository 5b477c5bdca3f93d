"""What one request may cost, what `/health` tells strangers, and what the caches report (issue 12, items 4, 5, 8, 9).

Over the tiny random TinySAM (image_size 256) through the WSGI app; the limits are the same for the real model.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
from ls_helpers import EVERYTHING_TEST_ENV, keypoint, predict_body, rectangle
from PIL import Image

from tinysam_backend.config import Settings
from tinysam_backend.label_studio.app import create_app
from tinysam_backend.label_studio.backend import SegmentationBackend
from tinysam_backend.label_studio.settings import LabelStudioSettings

IMG = "/data/upload/1/img0.png"  # 64 × 48


def _client(tiny_predictor, media_dir, **env):
    ls = LabelStudioSettings.from_env({"LABEL_STUDIO_MEDIA_DIR": str(media_dir), **EVERYTHING_TEST_ENV, **env})
    return create_app(Settings(), ls, backend=SegmentationBackend(tiny_predictor, ls, "tinysam-test")).test_client()


def _points(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    return [keypoint(float(x), float(y), 64, 48, positive=bool(i % 2 == 0))
            for i, (x, y) in enumerate(rng.uniform(1, 99, (n, 2)))]


# ------------------------------------------------------------------------------------------- item 4: prompt cost
def test_points_per_request_are_capped_at_64_by_default(client):
    r = client.post("/predict", json=predict_body(IMG, _points(1000)))
    assert r.status_code == 422, r.get_json()
    message = r.get_json()["message"]
    assert "1000 keypoints" in message and "64" in message and "TINYSAM_LS_MAX_POINTS" in message
    assert client.post("/predict", json=predict_body(IMG, _points(64))).status_code == 200


def test_points_cap_is_configurable(tiny_predictor, media_dir):
    client = _client(tiny_predictor, media_dir, TINYSAM_LS_MAX_POINTS="3")
    assert client.post("/predict", json=predict_body(IMG, _points(3))).status_code == 200
    r = client.post("/predict", json=predict_body(IMG, _points(4)))
    assert r.status_code == 422 and "more than the limit of 3" in r.get_json()["message"]


def test_many_regions_are_a_clear_422(client):
    many = [rectangle(10, 10, 20, 20, 64, 48)] * 1001
    r = client.post("/predict", json=predict_body(IMG, many))
    assert r.status_code == 422 and "1001 regions" in r.get_json()["message"]


def test_many_tasks_are_a_clear_422(client):
    body = predict_body(IMG, None)
    body["tasks"] = [{"id": i, "data": {"image": IMG}} for i in range(10_001)]
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and "10001 tasks" in r.get_json()["message"]


def test_a_claimed_huge_original_size_does_not_inflate_the_mask(client):
    # Label Studio's sizes are the image's; 10000 × 10000 for a 64 × 48 image would make a 100 Mpx mask and RLE.
    r = client.post("/predict", json=predict_body(IMG, [keypoint(50, 50, 10_000, 10_000)]))
    assert r.status_code == 422, r.status_code
    message = r.get_json()["message"]
    assert "10000x10000" in message and "64x48" in message


def test_a_slightly_different_original_size_still_works(client):
    r = client.post("/predict", json=predict_body(IMG, [keypoint(50, 50, 128, 96)]))
    assert r.status_code == 200
    region = r.get_json()["results"][0]["result"][0]
    assert (region["original_width"], region["original_height"]) == (128, 96)


# ----------------------------------------------------------------------------------------- item 5: extreme aspect
@pytest.mark.parametrize("size", [(5000, 1), (1, 5000)])
def test_extreme_aspect_ratio_is_a_clear_422(client, media_dir, size):
    w, h = size
    name = f"thin{w}x{h}.png"
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(media_dir / "upload" / "1" / name)
    r = client.post("/predict", json=predict_body(f"/data/upload/1/{name}", [keypoint(50, 50, w, h)]))
    assert r.status_code == 422, r.get_data(as_text=True)[:300]
    message = r.get_json()["message"]
    assert f"{w}x{h}" in message and "aspect ratio" in message


# ------------------------------------------------------------------------------------ item 8: /health says no path
def test_health_names_the_failure_without_paths(tmp_path):
    secret_dir = tmp_path / "srv secret-layout" / "models"
    secret_dir.mkdir(parents=True)
    checkpoint = secret_dir / "tinysam_42.3.pth"
    checkpoint.write_bytes(b"\x13" + np.random.default_rng(0).bytes(4095))  # random bytes, not a pickle or zip
    ls = LabelStudioSettings(basic_auth_user="u", basic_auth_pass="p")
    app = create_app(Settings(checkpoint=str(checkpoint)), ls)
    slot = app.extensions["tinysam"]
    slot.start_loading()
    slot.wait(60)
    client = app.test_client()
    r = client.get("/health")  # open without credentials
    assert r.status_code == 503
    body = r.get_json()
    assert body["status"] == "ERROR"
    assert "not a PyTorch checkpoint" in body["error"] and "pickled" not in body["error"]
    assert str(tmp_path) not in r.get_data(as_text=True) and "secret-layout" not in r.get_data(as_text=True)
    # An authenticated /predict gets the same path-free reason.
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    r = client.post("/predict", json=predict_body(IMG, [keypoint(1, 1, 64, 48)]), headers=auth)
    assert r.status_code == 503 and "not a PyTorch checkpoint" in r.get_json()["message"]
    assert "secret-layout" not in r.get_data(as_text=True)


def test_health_says_which_engine_runs_without_paths(tmp_path, parity_checkpoint):
    """Issue 13: `/health` names the device/engine/precision `load_model` chose and why; the cached graph's path stays
    out (the endpoint is open without credentials)."""
    cache = tmp_path / "srv secret-layout" / "cache"
    settings = Settings(checkpoint=str(parity_checkpoint), cache_dir=cache, engine="onnxruntime", precision="fp32")
    app = create_app(settings, LabelStudioSettings(basic_auth_user="u", basic_auth_pass="p"))
    slot = app.extensions["tinysam"]
    slot.start_loading()
    assert slot.wait(300), slot.error
    r = app.test_client().get("/health")
    assert r.status_code == 200
    engine = r.get_json()["engine"]
    assert (engine["device"], engine["engine"], engine["precision"]) == ("cpu", "onnxruntime", "fp32")
    assert engine["reason"] and isinstance(engine["cpu_flags"], list)
    assert any(cache.glob("engines/*")), "the engine's graph was built into the cache"
    assert "graph" not in engine and "secret-layout" not in r.get_data(as_text=True)


# ------------------------------------------------------------------------------- item 9: the caches' own accounts
def _storage_bytes(obj, seen: dict, depth: int = 0) -> None:
    """Bytes of every distinct tensor storage / array reachable from obj (independent of any `nbytes` property)."""
    if isinstance(obj, torch.Tensor):
        seen[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    elif isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        seen[id(base)] = base.nbytes
    elif depth < 6 and isinstance(obj, (list, tuple)):
        for x in obj:
            _storage_bytes(x, seen, depth + 1)
    elif depth < 6 and isinstance(obj, dict):
        for x in obj.values():
            _storage_bytes(x, seen, depth + 1)
    elif depth < 6 and (hasattr(obj, "__dict__") or hasattr(type(obj), "__slots__")):
        fields = dict(getattr(obj, "__dict__", {}))
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                fields[name] = getattr(obj, name)
        for x in fields.values():
            _storage_bytes(x, seen, depth + 1)


def test_refine_cache_counts_hits_and_misses(client):
    first = [keypoint(30, 40, 64, 48)]
    second = first + [keypoint(70, 60, 64, 48, positive=False)]
    assert client.post("/predict", json=predict_body(IMG, first, task_id=41)).status_code == 200
    assert client.post("/predict", json=predict_body(IMG, second, task_id=41)).status_code == 200  # refines
    assert client.post("/predict", json=predict_body(IMG, second, task_id=42)).status_code == 200  # no history
    refine = client.get("/health").get_json()["stats"]["refine_cache"]
    assert refine["hits"] == 1 and refine["misses"] == 1, refine
    assert refine["entries"] == 3


def test_cache_bytes_are_the_stored_bytes(client, tiny_backend):
    assert client.post("/predict", json=predict_body(IMG, [keypoint(30, 40, 64, 48)], task_id=51)).status_code == 200
    stats = client.get("/health").get_json()["stats"]
    emb = next(iter(tiny_backend.embeddings._items.values()))[0]
    seen: dict = {}
    _storage_bytes(emb, seen)
    assert stats["embedding_cache"]["bytes"] == sum(seen.values())
    logits = next(iter(tiny_backend.refine_logits._items.values()))[0]
    seen = {}
    _storage_bytes(logits, seen)
    assert stats["refine_cache"]["bytes"] == sum(seen.values())


def test_docs_state_the_measured_bytes_per_image():
    # 45 MiB per image for the fp32 vit_t model (measured in test_parity_model_bytes_per_image below).
    docs = (Path(__file__).resolve().parents[2] / "docs" / "label_studio.md").read_text()
    assert "an image takes 45 MiB" in docs and "~41 MiB" not in docs  # 41 MiB was the claim before
    assert "45 MiB" in (LabelStudioSettings.__doc__ or "")


def test_parity_model_bytes_per_image(parity_predictor):
    emb = parity_predictor.embed(np.zeros((480, 640, 3), np.uint8))
    seen: dict = {}
    _storage_bytes(emb, seen)
    assert sum(seen.values()) == emb.nbytes
    assert round(emb.nbytes / 2**20) == 45  # the figure in docs/label_studio.md and the settings docstring
