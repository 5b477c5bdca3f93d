"""The WSGI app over the tiny random TinySAM: answers equal the core's, refinement, no cross-talk, batch mode,
setup/health/webhook, basic auth, body cap, model loading states."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
from ls_helpers import keypoint, predict_body, rectangle

from tinysam_backend.config import Settings
from tinysam_backend.label_studio.app import ModelSlot, create_app
from tinysam_backend.label_studio.brush_rle import brush_rle_to_mask
from tinysam_backend.label_studio.settings import LabelStudioSettings

IMG = "/data/upload/1/img{}.png"


def _expected(predictor, media_dir, name, coords=None, labels=None, box=None, mask_input=None):
    emb = predictor.embed(media_dir / "upload" / "1" / name)
    masks, scores, low = predictor.predict(emb, coords, labels, box=box, mask_input=mask_input)
    best = int(np.argmax(scores))
    return masks[best], float(scores[best]), low[best]


def _mask_of(answer: dict, index: int = 0) -> np.ndarray:
    region = answer["results"][index]["result"][0]
    return brush_rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])


def test_recorded_interactive_request_gives_the_core_mask(client, recorded, tiny_predictor, media_dir):
    r = client.post("/predict", json=recorded["ls_1.23.2_predict_interactive"])
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()
    region = answer["results"][0]["result"][0]
    assert region["from_name"] == "tag" and region["to_name"] == "image" and region["type"] == "brushlabels"
    assert region["value"]["brushlabels"] == ["cat"]  # the keypoint's label, which the brush tag has
    mask, score, _ = _expected(tiny_predictor, media_dir, "7ec5dc46-pic.png", np.array([[40.0, 30.0]]), np.array([1]))
    assert np.array_equal(_mask_of(answer), mask)
    assert answer["results"][0]["score"] == pytest.approx(score, abs=1e-6)
    assert answer["results"][0]["model_version"] == "tinysam-test"


def test_second_click_refines_with_the_first_clicks_logits(client, tiny_predictor, media_dir):
    first = [keypoint(30, 40, 64, 48)]
    second = first + [keypoint(70, 60, 64, 48, positive=False)]
    assert client.post("/predict", json=predict_body(IMG.format(0), first, task_id=11)).status_code == 200
    answer = client.post("/predict", json=predict_body(IMG.format(0), second, task_id=11)).get_json()
    _, _, low = _expected(tiny_predictor, media_dir, "img0.png", np.array([[19.2, 19.2]]), np.array([1]))
    refined, _, _ = _expected(tiny_predictor, media_dir, "img0.png", np.array([[19.2, 19.2], [44.8, 28.8]]),
                              np.array([1, 0]), mask_input=low[None])
    assert np.array_equal(_mask_of(answer), refined)
    # Another task with the same clicks has no history: no logits fed.
    plain, _, _ = _expected(tiny_predictor, media_dir, "img0.png", np.array([[19.2, 19.2], [44.8, 28.8]]),
                            np.array([1, 0]))
    other = client.post("/predict", json=predict_body(IMG.format(0), second, task_id=12)).get_json()
    assert np.array_equal(_mask_of(other), plain)


def test_rectangle_prompt_and_label_fallback(client, tiny_predictor, media_dir):
    body = predict_body(IMG.format(1), [rectangle(25, 25, 50, 50, 64, 48, label="Car")])
    answer = client.post("/predict", json=body).get_json()
    mask, _, _ = _expected(tiny_predictor, media_dir, "img1.png", box=np.array([16.0, 12.0, 48.0, 36.0]))
    assert np.array_equal(_mask_of(answer), mask)
    assert answer["results"][0]["result"][0]["value"]["brushlabels"] == ["Object"]  # "Car" is not a brush label


def test_eight_images_at_once_each_gets_its_own_mask_and_is_encoded_once(client, tiny_backend, tiny_predictor,
                                                                          media_dir):
    expected = [_expected(tiny_predictor, media_dir, f"img{i}.png", np.array([[32.0, 24.0]]), np.array([1]))[0]
                for i in range(8)]
    assert len({m.tobytes() for m in expected}) == 8  # the images (and masks) really differ
    answers: dict[tuple[int, int], np.ndarray] = {}
    barrier = threading.Barrier(16)

    def annotate(i: int, j: int) -> None:
        barrier.wait()
        r = client.post("/predict", json=predict_body(IMG.format(i), [keypoint(50, 50, 64, 48)], task_id=100 + i))
        answers[(i, j)] = _mask_of(r.get_json())

    threads = [threading.Thread(target=annotate, args=(i, j)) for i in range(8) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (i, _j), mask in answers.items():
        assert np.array_equal(mask, expected[i]), f"image {i} got another image's mask"
    stats = tiny_backend.embeddings.stats()
    assert stats.misses == 8 and stats.entries == 8  # two simultaneous first clicks per image: one encode


def test_batch_pre_annotation(client, recorded, tiny_backend):
    answer = client.post("/predict", json=recorded["ls_1.23.2_predict_batch"]).get_json()
    assert len(answer["results"]) == 1
    regions = answer["results"][0]["result"]
    assert 1 <= len(regions) <= 5  # TINYSAM_LS_BATCH_MAX_REGIONS
    scores = [r["score"] for r in regions]
    assert scores == sorted(scores, reverse=True)
    for region in regions:
        assert region["value"]["brushlabels"] == ["cat"]  # no class from everything mode: the first label
        assert brush_rle_to_mask(region["value"]["rle"], 60, 80).any()
    assert answer["results"][0]["score"] == pytest.approx(np.mean(scores))


def test_batch_of_many_tasks_answers_one_so_label_studio_goes_task_by_task(client, tiny_backend):
    body = predict_body(IMG.format(2), None)
    body["tasks"] += [{"id": 2, "data": {"image": IMG.format(3)}}, {"id": 3, "data": {"image": IMG.format(4)}}]
    answer = client.post("/predict", json=body).get_json()
    assert len(answer["results"]) == 1
    # Label Studio then asks for the first task alone: answered from the cache.
    again = client.post("/predict", json=predict_body(IMG.format(2), None)).get_json()
    assert again["results"] == answer["results"]
    assert tiny_backend.pre_annotations.stats().hits == 1


def test_batch_can_be_turned_off(tiny_backend, media_dir):
    settings = LabelStudioSettings.from_env({"LABEL_STUDIO_MEDIA_DIR": str(media_dir),
                                             "TINYSAM_LS_BATCH_ENABLED": "false"})
    tiny_backend.settings = settings
    client = create_app(Settings(), settings, backend=tiny_backend).test_client()
    answer = client.post("/predict", json=predict_body(IMG.format(0), None)).get_json()
    assert answer["results"] == [] and "turned off" in answer["message"]


def test_setup_health_versions_webhook(client, recorded):
    assert client.post("/setup", json=recorded["ls_1.23.2_setup"]).get_json() == {"model_version": "tinysam-test"}
    r = client.post("/setup", json={"schema": '<View><Image name="i" value="$i"/></View>'})
    assert r.status_code == 422 and "no BrushLabels" in r.get_json()["message"]
    health = client.get("/health").get_json()
    assert health["status"] == "UP" and health["model_ready"] is True
    assert client.get("/livez").get_json() == {"status": "alive"}
    assert client.get("/versions").get_json()["versions"] == ["tinysam-test"]
    assert client.get("/").get_json()["training"] is False
    r = client.post("/webhook", json=recorded["ls_1.23.2_webhook_annotation_created"])
    assert r.status_code == 200 and "ANNOTATION_CREATED" in r.get_json()["message"]
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert r.status_code == 501 and "training is not offered" in r.get_json()["message"]
    assert client.post("/train", json={}).status_code == 501


def test_basic_auth(tiny_backend, media_dir):
    settings = LabelStudioSettings.from_env({"LABEL_STUDIO_MEDIA_DIR": str(media_dir), "BASIC_AUTH_USER": "ann",
                                             "BASIC_AUTH_PASS": "s3cret:x"})
    client = create_app(Settings(), settings, backend=tiny_backend).test_client()
    body = predict_body(IMG.format(0), [keypoint(50, 50, 64, 48)])
    r = client.post("/predict", json=body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    bad = "Basic " + base64.b64encode(b"ann:wrong").decode()
    assert client.post("/predict", json=body, headers={"Authorization": bad}).status_code == 401
    good = "Basic " + base64.b64encode(b"ann:s3cret:x").decode()
    assert client.post("/predict", json=body, headers={"Authorization": good}).status_code == 200
    assert client.get("/health").status_code == 200  # probes need no credentials


def test_body_cap(tiny_backend, media_dir):
    settings = LabelStudioSettings.from_env({"LABEL_STUDIO_MEDIA_DIR": str(media_dir),
                                             "TINYSAM_LS_MAX_BODY_BYTES": "2048"})
    client = create_app(Settings(), settings, backend=tiny_backend).test_client()
    r = client.post("/predict", data=b"{" + b" " * 4096 + b"}", content_type="application/json")
    assert r.status_code == 413 and "TINYSAM_LS_MAX_BODY_BYTES" in r.get_json()["message"]


def test_model_loading_states(tiny_backend):
    gate = threading.Event()

    def slow_loader():
        gate.wait(5)
        return tiny_backend

    slot = ModelSlot(loader=slow_loader)
    assert slot.state == "idle"
    slot.start_loading()
    assert slot.state == "loading"
    gate.set()
    assert slot.wait(5) and slot.state == "ready"
    # A checkpoint that does not exist: /health and /predict say why, the worker keeps answering.
    client = create_app(Settings(checkpoint="/nonexistent/ckpt.pth"), LabelStudioSettings()).test_client()
    r = client.get("/health")  # starts loading; it fails fast
    assert r.status_code == 503 and r.get_json()["status"] in ("LOADING", "ERROR")
    for _ in range(100):
        if client.get("/health").get_json()["status"] == "ERROR":
            break
        time.sleep(0.05)
    health = client.get("/health").get_json()
    assert health["status"] == "ERROR" and "not found" in health["error"]
    r = client.post("/predict", json=predict_body(IMG.format(0), [keypoint(50, 50, 64, 48)]))
    assert r.status_code == 503 and "failed to load" in r.get_json()["message"]
