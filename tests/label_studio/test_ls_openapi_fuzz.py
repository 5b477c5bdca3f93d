"""Every endpoint fuzzed from the backend's own OpenAPI description (`GET /openapi.json`) with schemathesis,
in-process against the WSGI app over the real model architecture with the parity checkpoint.

Checks on every answer: no 5xx (but the 501 of `/train`), a status code the description lists, JSON as described (errors as
`{"status", "error", "message"}`). No Label Studio URL is configured and images come from a Label Studio media
directory, so no answer has a reason to be a 502/503/504: any 5xx is a defect.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ls_helpers import EVERYTHING_TEST_ENV, LABEL_CONFIG
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tinysam_backend.config import Settings
from tinysam_backend.label_studio.app import create_app
from tinysam_backend.label_studio.backend import SegmentationBackend
from tinysam_backend.label_studio.openapi import openapi_spec
from tinysam_backend.label_studio.settings import LabelStudioSettings

NOT_OFFERED = ("/train", "/webhook")  # 501 Not Implemented is their documented answer to training requests


def no_server_error(ctx, response, case):
    """schemathesis' `not_a_server_error`, except the documented 501 of the training endpoints."""
    if response.status_code == 501 and case.path in NOT_OFFERED:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_app(parity_predictor, media_dir):
    env = {"LABEL_STUDIO_MEDIA_DIR": str(media_dir), **EVERYTHING_TEST_ENV}
    ls = LabelStudioSettings.from_env(env)
    return create_app(Settings(), ls, backend=SegmentationBackend(parity_predictor, ls, "tinysam-fuzz"))


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzzed_app)


# The operations, from the description itself (no model needed to list them). schemathesis' own lazy pytest
# integration (`from_fixture`) does not run under pytest 9, so each operation's strategy is driven by hypothesis here.
# Negative (schema-violating) cases exist only for operations that take a body.
CASES = [(method.upper(), path, mode) for path, item in openapi_spec()["paths"].items() for method, op in item.items()
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or "requestBody" in op]

# Generated XML is almost never a labeling config and generated strings almost never an image of the media
# directory; half of the /predict bodies get a real config and one of these references, so that the fuzz reaches
# the prompt, fetch and model code too.
CONFIGS = [LABEL_CONFIG, "<View><Image name='image' value='$image'/></View>"]
IMAGES = ["/data/upload/1/img0.png", "/data/upload/1/img1.png", "/data/upload/1/broken.png",
          "/data/upload/1/missing.png", "/data/upload/1/doc.pdf", "http://169.254.169.254/latest/meta-data/",
          "http://127.0.0.1:1\\@127.0.0.1:2/data/upload/1/img0.png", "file:///etc/passwd"]


def _label_studio_shaped(case, config: str, image: str):
    body = case.body
    if not isinstance(body, dict):
        return case
    body = {**body, "label_config": config}
    if isinstance(body.get("tasks"), list):
        body["tasks"] = [{**t, "data": {**t["data"], "image": image}} if isinstance(t, dict)
                         and isinstance(t.get("data"), dict) else t for t in body["tasks"]]
    context = (body.get("params") or {}).get("context") if isinstance(body.get("params"), dict) else None
    if isinstance(context, dict) and isinstance(context.get("result"), list):
        context["result"] = [{**r, "to_name": "image"} if isinstance(r, dict) else r for r in context["result"]]
    case.body = body
    return case


@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_every_endpoint_from_the_openapi_description(api_schema, method, path, mode):
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)
    examples = 15
    if path == "/predict":
        examples = 40
        shaped = st.builds(_label_studio_shaped, strategy, st.sampled_from(CONFIGS), st.sampled_from(IMAGES))
        strategy = st.one_of(strategy, shaped)

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def fuzz(case):
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_description_lists_every_route(fuzzed_app):
    described = set(fuzzed_app.test_client().get("/openapi.json").get_json()["paths"])
    routed = {rule.rule for rule in fuzzed_app.url_map.iter_rules() if rule.endpoint != "static"}
    assert routed == described


def test_still_answering_after_the_fuzz(fuzzed_app, media_dir):
    client = fuzzed_app.test_client()
    assert client.get("/health").get_json()["model_ready"] is True
    r = client.post("/predict", json=schemathesis_example())
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["result"][0]["type"] == "brushlabels"


def schemathesis_example() -> dict:
    content = openapi_spec()["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    return content["example"]
