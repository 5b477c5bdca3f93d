"""Property-based fuzz of every endpoint's JSON: malformed input never gets a 5xx, and the app keeps answering.

Bodies mix the shapes Label Studio sends with arbitrary JSON at every level (wrong types, NaN/inf, huge and
negative numbers, unknown tags and image references), over the tiny random model.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ls_helpers import EVERYTHING_TEST_ENV, LABEL_CONFIG

from tinysam_backend.config import Settings
from tinysam_backend.label_studio.app import create_app
from tinysam_backend.label_studio.backend import SegmentationBackend
from tinysam_backend.label_studio.settings import LabelStudioSettings

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=12)
numbers = st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0, 50, 100, float("nan"), float("inf"), 1e308])
sizes = st.integers(-5, 5000) | st.sampled_from([0, 64, 48, 10**9, 2.5]) | any_json

region_value = st.fixed_dictionaries({}, optional={
    "x": numbers | any_json, "y": numbers | any_json, "width": numbers, "height": numbers, "rotation": numbers | any_json,
    "keypointlabels": st.lists(st.text(max_size=8), max_size=2) | any_json,
    "rectanglelabels": st.lists(st.sampled_from(["Person", "Object", "x"]), max_size=2)})
region = st.fixed_dictionaries({"type": st.sampled_from(["keypointlabels", "rectanglelabels", "keypoint", "rectangle",
                                                         "brushlabels", "choices"]) | any_json},
                               optional={"value": region_value | any_json, "original_width": sizes,
                                         "original_height": sizes, "to_name": st.sampled_from(["image", "other"]) | any_json,
                                         "from_name": st.text(max_size=5), "is_positive": st.booleans() | any_json,
                                         "image_rotation": st.sampled_from([0, 90, 360]) | any_json})
valid_refs = st.sampled_from(["/data/upload/1/img0.png", "/data/upload/1/img1.png"])
image_refs = valid_refs | valid_refs | st.sampled_from(["/data/upload/1/img0.png", "/data/upload/1/img1.png", "/data/upload/1/broken.png",
                              "/data/upload/1/doc.pdf", "/data/upload/1/missing.png", "/data/upload/../../etc/passwd",
                              "http://169.254.169.254/latest", "file:///etc/passwd", "gopher://x", "",
                              "http://127.0.0.1:1\\@127.0.0.1:2/data/upload/1/img0.png", "http://u@h/x.png",
                              "http://h:99999/x", "http://[::1/x", "http://h/\x00", "/data/upload/1/img0.png\t",
                              "http://ex\u00e4mple.com/x.png", "//h/x.png"]) | any_json
configs = st.sampled_from([LABEL_CONFIG, "<View/>", "<View><Image name='image' value='$image'/></View>", "<<<",
                           '<!DOCTYPE a [<!ENTITY b "c">]><View/>']) | any_json
task = st.fixed_dictionaries({"data": st.fixed_dictionaries({"image": image_refs}) | any_json},
                             optional={"id": st.integers(0, 5) | any_json})
params = st.fixed_dictionaries({}, optional={
    "context": st.fixed_dictionaries({"result": st.lists(region, min_size=1, max_size=4)})
    | st.fixed_dictionaries({"result": st.lists(region, min_size=1, max_size=4)}) | st.none()
    | st.fixed_dictionaries({}, optional={"result": any_json}) | any_json}) | st.none() | any_json
# Mostly bodies shaped like Label Studio's (so the checks deep inside are reached), sometimes anything at all.
well_formed = st.fixed_dictionaries({"tasks": st.lists(task, min_size=1, max_size=3),
                                     "label_config": st.just(LABEL_CONFIG) | configs, "params": params},
                                    optional={"project": any_json})
loose = st.fixed_dictionaries({}, optional={"tasks": st.lists(task, max_size=3) | any_json, "label_config": configs,
                                            "params": params}) | any_json


@pytest.fixture(scope="module")
def fuzz_client(tiny_predictor, media_dir):
    env = {"LABEL_STUDIO_MEDIA_DIR": str(media_dir), **EVERYTHING_TEST_ENV}
    ls = LabelStudioSettings.from_env(env)
    app = create_app(Settings(), ls, backend=SegmentationBackend(tiny_predictor, ls, "tinysam-fuzz"))
    return app.test_client()


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:500])
    body = response.get_json()
    assert isinstance(body, dict)
    if response.status_code >= 400:
        assert body["status"] == response.status_code and body["message"]


@FUZZ
@given(body=well_formed)
def test_predict_never_5xx(fuzz_client, body):
    _check(fuzz_client.post("/predict", data=json.dumps(body), content_type="application/json"))


@FUZZ
@given(body=loose)
def test_predict_loose_json_never_5xx(fuzz_client, body):
    _check(fuzz_client.post("/predict", data=json.dumps(body), content_type="application/json"))


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_raw_bytes_never_5xx(fuzz_client, raw):
    for path in ("/predict", "/setup", "/webhook"):
        _check(fuzz_client.post(path, data=raw, content_type="application/json"))


@settings(max_examples=80, deadline=None)
@given(body=st.fixed_dictionaries({}, optional={"schema": configs, "project": any_json, "hostname": any_json,
                                                "access_token": any_json, "extra_params": any_json}) | any_json)
def test_setup_never_5xx(fuzz_client, body):
    _check(fuzz_client.post("/setup", data=json.dumps(body), content_type="application/json"))


@settings(max_examples=80, deadline=None)
@given(body=st.fixed_dictionaries({}, optional={"action": st.sampled_from(["ANNOTATION_CREATED", "PROJECT_UPDATED"])
                                                | any_json, "annotation": any_json, "project": any_json}) | any_json)
def test_webhook_and_versions_never_5xx(fuzz_client, body):
    _check(fuzz_client.post("/webhook", data=json.dumps(body), content_type="application/json"))
    _check(fuzz_client.get("/versions", data=json.dumps(body), content_type="application/json"))


def test_still_answering_after_fuzz(fuzz_client):
    assert fuzz_client.get("/health").status_code == 200
