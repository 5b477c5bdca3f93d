"""End to end: a real Label Studio 1.23.2 server and the backend under gunicorn with the parity checkpoint.

Label Studio runs from its own venv (`.ci/label_studio.sh` installs it into `.venv-ls`, or set TINYSAM_LS_VENV);
without it these tests skip with that reason, and fail under CI=true. It starts once for the module (35–120 s
here) in a throw-away data directory, with the settings it needs to accept a backend on 127.0.0.1.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from ls_helpers import (
    EVERYTHING_TEST_ENV,
    LABEL_CONFIG,
    OFFLINE_ENV,
    SAME_ARITHMETIC_AS_PARITY_PREDICTOR,
    TOKEN,
    keypoint,
    label_studio_env,
    label_studio_executable,
    random_image,
    rectangle,
    require,
    serve,
    start_label_studio,
    wait_for_prediction,
)
from PIL import Image

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)
PREDICTION_TIMEOUT = 300  # background pre-annotation of a small image takes seconds; bounded for a loaded machine


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    require(label_studio_executable().is_file(),
            f"Label Studio 1.23.2 not installed at {label_studio_executable().parents[1]} (run .ci/label_studio.sh)")
    try:
        ls = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    except RuntimeError as e:
        pytest.fail(str(e))
    yield ls
    ls.stop()


@pytest.fixture(scope="module")
def backend(label_studio, parity_checkpoint, tmp_path_factory):
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": TOKEN, "TINYSAM_LS_PREANNOTATE": "background",
           **EVERYTHING_TEST_ENV, **SAME_ARITHMETIC_AS_PARITY_PREDICTOR}
    served = serve(parity_checkpoint, env, tmp_path_factory.mktemp("backend") / "gunicorn.log")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def project(label_studio, backend, parity_images):
    """A project with BrushLabels + smart KeyPointLabels + smart RectangleLabels, two image tasks, the backend."""
    ls = label_studio
    pid = ls.api("POST", "/api/projects/", 201, json={"title": "TinySAM e2e", "label_config": LABEL_CONFIG})["id"]
    tasks = {}
    for name in ("astronaut", "coffee"):
        buf = io.BytesIO()
        Image.fromarray(parity_images[name]).save(buf, "PNG")
        ls.api("POST", f"/api/projects/{pid}/import", 201, files={"file": (f"{name}.png", buf.getvalue(), "image/png")})
    for task in ls.api("GET", "/api/tasks/", params={"project": pid})["tasks"]:
        name = "astronaut" if "astronaut" in task["data"]["image"] else "coffee"
        tasks[name] = task
    ml = ls.api("POST", "/api/ml/", 201, json={"url": backend.url, "project": pid, "is_interactive": True,
                                               "title": "TinySAM"})
    assert ml["readable_state"] == "Connected", ml
    return {"id": pid, "tasks": tasks, "ml": ml}


def _click(ls, project, task_name: str, regions: list[dict]) -> dict:
    task_id = project["tasks"][task_name]["id"]
    answer = ls.api("POST", f"/api/ml/{project['ml']['id']}/interactive-annotating",
                    json={"task": task_id, "context": {"result": regions}})
    assert "data" in answer, answer  # Label Studio puts the backend's answer under data, errors under errors
    return answer["data"]


def _decode(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle  # Label Studio's own decoder

    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


def _best(predictor, image, **prompt):
    masks, scores, low = predictor.predict(predictor.embed(image), **prompt)
    best = int(np.argmax(scores))
    return masks[best], float(scores[best]), low[best]


def test_click_gives_the_core_mask_then_refines(label_studio, project, parity_predictor, parity_images, backend):
    image = parity_images["astronaut"]
    h, w = image.shape[:2]
    first = [keypoint(40.0, 30.0, w, h)]
    data = _click(label_studio, project, "astronaut", first)
    region = data["result"][0]
    assert (region["type"], region["from_name"], region["to_name"]) == ("brushlabels", "tag", "image")
    assert region["value"]["brushlabels"] == ["Person"]
    assert data["model_version"] == project["ml"]["model_version"] == "tinysam-tinysam_random_weights"
    expected, score, low = _best(parity_predictor, image, point_coords=np.array([[0.4 * w, 0.3 * h]]),
                                 point_labels=np.array([1]))
    got = _decode(region)
    assert got.shape == (h, w)
    assert np.array_equal(got, expected)
    assert data["score"] == pytest.approx(score, abs=1e-5)

    # The annotator adds a negative click: the same task, so the first click's logits refine the mask.
    second = first + [keypoint(60.0, 70.0, w, h, positive=False)]
    data = _click(label_studio, project, "astronaut", second)
    refined, _, _ = _best(parity_predictor, image, point_coords=np.array([[0.4 * w, 0.3 * h], [0.6 * w, 0.7 * h]]),
                          point_labels=np.array([1, 0]), mask_input=low[None])
    assert np.array_equal(_decode(data["result"][0]), refined)


def test_rectangle_prompt(label_studio, project, parity_predictor, parity_images):
    image = parity_images["coffee"]
    h, w = image.shape[:2]
    data = _click(label_studio, project, "coffee", [rectangle(20.0, 25.0, 50.0, 40.0, w, h)])
    expected, _, _ = _best(parity_predictor, image, box=np.array([0.2 * w, 0.25 * h, 0.7 * w, 0.65 * h]))
    assert np.array_equal(_decode(data["result"][0]), expected)


def _check_everything_regions(regions: list[dict], image: np.ndarray) -> None:
    assert 1 <= len(regions) <= 5  # TINYSAM_LS_BATCH_MAX_REGIONS
    h, w = image.shape[:2]
    for region in regions:
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
        assert _decode(region).shape == (h, w)


def test_batch_predictions_are_stored(label_studio, project, parity_images):
    """"Retrieve predictions" on every task: Label Studio gets its answer at once, the backend writes each task's
    prediction through Label Studio's API, and every task ends with exactly one prediction of the model."""
    ls = label_studio
    answer = ls.api("POST", "/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": project["id"]},
                    json={"selectedItems": {"all": True, "excluded": []}})
    assert answer["processed_items"] == 2, answer
    version = project["ml"]["model_version"]
    for name, task in project["tasks"].items():
        assert wait_for_prediction(ls, task["id"], version, PREDICTION_TIMEOUT) is not None, name
        predictions = ls.api("GET", "/api/predictions/", params={"task": task["id"]})
        ours = [p for p in predictions if p["model_version"] == version]
        assert len(ours) == 1, predictions
        _check_everything_regions(ours[0]["result"], parity_images[name])


def test_opening_an_unpredicted_task_answers_at_once_and_the_prediction_follows(label_studio, project, backend,
                                                                                 parity_predictor):
    """With Label Studio's defaults, loading a task without predictions (`GET /api/tasks/<id>/`, what the labelling
    page does) calls the backend and waits. The backend answers without a prediction, so the task comes back at
    once with none; its everything-mode prediction is written to Label Studio afterwards."""
    from tinysam_backend.everything import segment_everything

    ls = label_studio
    image = random_image(21, 180, 240)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    ls.api("POST", f"/api/projects/{project['id']}/import", 201,
           files={"file": ("unpredicted.png", buf.getvalue(), "image/png")})
    [task] = [t for t in ls.api("GET", "/api/tasks/", params={"project": project["id"]})["tasks"]
              if "unpredicted" in t["data"]["image"]]
    assert ls.api("GET", f"/api/projects/{project['id']}/")["show_collab_predictions"] is True  # Label Studio's default

    start = time.perf_counter()
    opened = ls.api("GET", f"/api/tasks/{task['id']}/", params={"project": project["id"]})
    logger.info("task open with no prediction took %.2f s", time.perf_counter() - start)
    assert opened["predictions"] == []  # not computed while Label Studio waited

    version = project["ml"]["model_version"]
    written = wait_for_prediction(ls, task["id"], version, PREDICTION_TIMEOUT)
    assert written is not None, f"no prediction after {PREDICTION_TIMEOUT} s:\n{backend.log_text()[-2000:]}"
    _check_everything_regions(written["result"], image)
    # The same masks as everything mode in this process with the backend's parameters (highest IoU first, top 5);
    # a pixel whose logit is ~0 may flip between thread counts.
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "high_score_thresh": 0.12}
    records = segment_everything(parity_predictor, image, mode="hierarchical", **params)[:5]
    assert len(written["result"]) == len(records)
    from pycocotools import mask as mask_utils

    for region, record in zip(written["result"], records, strict=True):
        expected = mask_utils.decode(record["segmentation"]).astype(bool)
        assert np.mean(_decode(region) != expected) < 1e-3
        assert region["score"] == pytest.approx(record["predicted_iou"], abs=1e-4)
    # Opened again: Label Studio shows the stored prediction (and does not ask the backend again).
    again = ls.api("GET", f"/api/tasks/{task['id']}/", params={"project": project["id"]})
    assert [p["id"] for p in again["predictions"]] == [written["id"]]
    stats = requests.get(backend.url + "/health", timeout=10).json()["stats"]["preannotate"]
    assert stats["mode"] == "background" and stats["failed"] == 0 and stats["written"] >= 3


def test_label_studio_runs_offline(label_studio):
    """The variables of an offline install reach the running Label Studio process."""
    raw = Path(f"/proc/{label_studio.proc.pid}/environ").read_bytes().decode()
    environ = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    for name, value in OFFLINE_ENV.items():
        assert environ.get(name) == value, name
    assert label_studio_env(label_studio.log.parent)["LATEST_VERSION_CHECK"] == "false"


def test_worker_was_warmed_up_before_it_reported_ready(backend):
    warm = requests.get(backend.url + "/health", timeout=10).json()["stats"]["warm_up"]
    assert warm["done"] is True and warm["encodes"] == 1


def test_personal_access_token_fetches_images(label_studio, project, parity_images):
    from tinysam_backend.label_studio.images import ImageFetcher
    from tinysam_backend.label_studio.settings import LabelStudioSettings

    tokens = label_studio.session.get(label_studio.url + "/api/token/", timeout=30).json()
    if tokens:  # one personal access token per user: replace it to learn its value
        label_studio.api("POST", "/api/token/revoke/", 204, json={"refresh": tokens[0]["token"]})
    pat = label_studio.api("POST", "/api/token/", 201)["token"]
    fetcher = ImageFetcher(LabelStudioSettings(label_studio_url=label_studio.url, label_studio_api_key=pat), 10**8)
    location = fetcher.locate(project["tasks"]["coffee"]["data"]["image"])
    assert np.array_equal(fetcher.load(location), parity_images["coffee"])
    assert fetcher.auth.is_pat
