"""End to end: a real Label Studio 1.23.2 server and the backend under gunicorn with the parity checkpoint.

Label Studio runs from its own venv (`.ci/label_studio.sh` installs it into `.venv-ls`, or set TINYSAM_LS_VENV);
without it these tests skip with that reason, and fail under CI=true. It starts once for the module (35–120 s
here) in a throw-away data directory, with the settings it needs to accept a backend on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from ls_helpers import EVERYTHING_TEST_ENV, LABEL_CONFIG, REPO, free_port, keypoint, rectangle, require, serve
from PIL import Image

pytestmark = pytest.mark.e2e

TOKEN = "0123456789abcdef0123456789abcdef01234567"
STARTUP_TIMEOUT = 300


class LabelStudio:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {TOKEN}"

    def api(self, method: str, path: str, expect: int = 200, **kw):
        r = self.session.request(method, self.url + path, timeout=150, **kw)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = Path(os.environ.get("TINYSAM_LS_VENV", REPO / ".venv-ls"))
    exe = venv / "bin" / "label-studio"
    require(exe.is_file(), f"Label Studio 1.23.2 not installed at {venv} (run .ci/label_studio.sh)")
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "TINYSAM_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_USERNAME": "e2e@example.com",
        "LABEL_STUDIO_PASSWORD": "e2e-password-123", "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Needed for a backend on 127.0.0.1 (connecting it also creates a webhook, checked against SSRF rules).
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false", "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # No traffic off this machine: no PyPI version check, no analytics, no Sentry reports.
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
    })
    log = data / "label-studio.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
                                 str(port)], cwd=data, env=env, stdout=handle, stderr=subprocess.STDOUT)
    ls = LabelStudio(f"http://127.0.0.1:{port}", proc, log)
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() - start > STARTUP_TIMEOUT:
                pytest.fail(f"Label Studio not up after {STARTUP_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            try:
                if ls.session.get(ls.url + "/api/projects/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield ls
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def backend(label_studio, parity_checkpoint, tmp_path_factory):
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": TOKEN, **EVERYTHING_TEST_ENV}
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


def test_batch_predictions_are_stored(label_studio, project, parity_images):
    ls = label_studio
    answer = ls.api("POST", "/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": project["id"]},
                    json={"selectedItems": {"all": True, "excluded": []}})
    assert answer["processed_items"] == 2, answer
    for name, task in project["tasks"].items():
        predictions = ls.api("GET", "/api/predictions/", params={"task": task["id"]})
        ours = [p for p in predictions if p["model_version"] == project["ml"]["model_version"]]
        assert len(ours) == 1, predictions
        regions = ours[0]["result"]
        assert 1 <= len(regions) <= 5
        h, w = parity_images[name].shape[:2]
        for region in regions:
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
            assert _decode(region).shape == (h, w)


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
