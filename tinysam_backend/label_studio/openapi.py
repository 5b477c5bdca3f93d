"""The OpenAPI 3.0 description of the backend's HTTP API, served at `GET /openapi.json`.

It is what a client may send and what it gets back — Label Studio's ML-backend protocol as this backend speaks it —
and what `tests/label_studio/test_ls_openapi_fuzz.py` fuzzes every endpoint from (schemathesis). The limits it
states are the backend's own constants and settings, so the description cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from .protocol import MAX_CONTEXT_REGIONS, MAX_TASKS
from .settings import LabelStudioSettings

_ERROR_STATUSES = {
    "400": "malformed request (not JSON, wrong types, missing fields)",
    "401": "basic authentication required (BASIC_AUTH_USER / BASIC_AUTH_PASS set)",
    "403": "image host not allowed, or not a public address",
    "404": "image not found at its host",
    "413": "request body or image larger than its limit",
    "422": "input that cannot be segmented: labeling config, prompt, image, or a limit per request",
    "502": "image host or Label Studio failed",
    "503": "model loading or failed to load",
    "504": "image fetch past its deadline",
}

_RECORDED_CLICK = {
    "tasks": [{"id": 7, "data": {"image": "/data/upload/1/img0.png"}}],
    "project": "1.1700000000",
    "label_config": "<View><Image name=\"image\" value=\"$image\"/><BrushLabels name=\"tag\" toName=\"image\">"
                    "<Label value=\"Object\"/></BrushLabels><KeyPointLabels name=\"kp\" toName=\"image\" "
                    "smart=\"true\"><Label value=\"Object\" smart=\"true\"/></KeyPointLabels></View>",
    "params": {"login": None, "password": None, "context": {"result": [{
        "original_width": 64, "original_height": 48, "image_rotation": 0,
        "value": {"x": 30.0, "y": 40.0, "width": 0.5, "keypointlabels": ["Object"]},
        "from_name": "kp", "to_name": "image", "type": "keypointlabels", "origin": "manual", "is_positive": True}]}},
}


def _json_body(schema: dict, example: Any | None = None, required: bool = True) -> dict:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"required": required, "content": {"application/json": content}}


def _responses(ok: dict, *errors: str, ok_status: str = "200") -> dict:
    responses = {ok_status: {"description": "success", "content": {"application/json": {"schema": ok}}}}
    for status in errors:
        responses[status] = {"description": _ERROR_STATUSES[status], "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return responses


def openapi_spec(settings: LabelStudioSettings | None = None) -> dict:
    """The OpenAPI 3.0.3 document (a JSON-ready dict); limits taken from `settings` (defaults when None)."""
    settings = settings or LabelStudioSettings()
    any_object = {"type": "object", "additionalProperties": True}
    region = {
        "type": "object", "additionalProperties": True,
        "description": "a region of the annotation in progress; keypoint and rectangle regions form the prompt",
        "properties": {
            "type": {"type": "string", "example": "keypointlabels"},
            "from_name": {"type": "string"}, "to_name": {"type": "string", "example": "image"},
            "original_width": {"type": "integer", "minimum": 1}, "original_height": {"type": "integer", "minimum": 1},
            "image_rotation": {"type": "number"}, "is_positive": {"type": "boolean"},
            "value": {"type": "object", "additionalProperties": True, "properties": {
                "x": {"type": "number", "description": "percent of the image width"},
                "y": {"type": "number", "description": "percent of the image height"},
                "width": {"type": "number"}, "height": {"type": "number"}, "rotation": {"type": "number"}}},
        },
    }
    predict_request = {
        "type": "object", "required": ["tasks", "label_config"], "additionalProperties": True,
        "properties": {
            "tasks": {"type": "array", "minItems": 1, "maxItems": MAX_TASKS, "items": {
                "type": "object", "required": ["data"], "additionalProperties": True,
                "properties": {"id": {"type": "integer"}, "data": {
                    "type": "object", "additionalProperties": True,
                    "description": "the task data; the Image tag's value=\"$key\" names the image URL's key",
                    "properties": {"image": {"type": "string", "example": "/data/upload/1/img0.png"}}}}}},
            "label_config": {"type": "string", "description": "the project's labeling config XML"},
            "project": {"type": "string"},
            "params": {"type": "object", "nullable": True, "additionalProperties": True, "properties": {
                "context": {"type": "object", "nullable": True, "additionalProperties": True,
                            "description": f"interactive prompt: at most {settings.max_points} keypoints "
                                         f"(TINYSAM_LS_MAX_POINTS) and {MAX_CONTEXT_REGIONS} regions",
                            "properties": {"result": {"type": "array", "maxItems": MAX_CONTEXT_REGIONS,
                                                      "items": {"$ref": "#/components/schemas/Region"}}}}}},
        },
    }
    predict_response = {"type": "object", "required": ["results", "model_version"], "properties": {
        "results": {"type": "array", "items": {"type": "object", "required": ["result", "score", "model_version"],
                                                "properties": {"result": {"type": "array", "items": any_object},
                                                               "score": {"type": "number"},
                                                               "model_version": {"type": "string"}}}},
        "model_version": {"type": "string"}, "message": {"type": "string"}}}
    error = {"type": "object", "required": ["status", "error", "message"], "properties": {
        "status": {"type": "integer"}, "error": {"type": "string"}, "message": {"type": "string", "minLength": 1}}}
    health = {"type": "object", "required": ["status", "model_ready"], "properties": {
        "status": {"type": "string", "enum": ["UP", "LOADING", "ERROR"]}, "model_ready": {"type": "boolean"},
        "model_version": {"type": "string"}, "error": {"type": "string"}, "stats": any_object}}
    versions = {"type": "object", "required": ["versions", "model_version"], "properties": {
        "versions": {"type": "array", "items": {"type": "string"}}, "model_version": {"type": "string"}}}
    body_limit = f"bodies above {settings.max_body_bytes} bytes (TINYSAM_LS_MAX_BODY_BYTES) get 413"
    return {
        "openapi": "3.0.3",
        "info": {"title": "TinySAM Label Studio ML backend", "version": "1",
                 "description": "Label Studio's ML-backend protocol: interactive clicks → one brush mask, "
                                f"no context → segment-everything. {body_limit}."},
        "components": {
            "schemas": {"Error": error, "Region": region, "PredictRequest": predict_request},
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
        },
        "security": [{}, {"basicAuth": []}],
        "paths": {
            "/": {"get": {"summary": "name, model version and endpoints", "responses": _responses(any_object, "401")}},
            "/health": {"get": {"summary": "readiness (open without basic auth)", "security": [],
                                "responses": {"200": {"description": "model ready", "content": {
                                    "application/json": {"schema": health}}},
                                              "503": {"description": "model loading or failed", "content": {
                                                  "application/json": {"schema": health}}}}}},
            "/livez": {"get": {"summary": "liveness (open without basic auth)", "security": [],
                               "responses": _responses(any_object)}},
            "/openapi.json": {"get": {"summary": "this description", "responses": _responses(any_object, "401")}},
            "/setup": {"post": {"summary": "check the labeling config; returns the model version",
                                "requestBody": _json_body({"type": "object", "additionalProperties": True,
                                                           "properties": {"schema": {"type": "string"},
                                                                          "project": {"type": "string"}}},
                                                          required=False),
                                "responses": _responses({"type": "object", "required": ["model_version"],
                                                         "properties": {"model_version": {"type": "string"}}},
                                                        "400", "401", "413", "422")}},
            "/predict": {"post": {"summary": "segment: clicks (params.context) or everything (no context)",
                                  "requestBody": _json_body({"$ref": "#/components/schemas/PredictRequest"},
                                                            _RECORDED_CLICK),
                                  "responses": _responses(predict_response, "400", "401", "403", "404", "413",
                                                          "422", "502", "503", "504")}},
            "/webhook": {"post": {"summary": "Label Studio events, acknowledged (the backend does not train)",
                                  "requestBody": _json_body({"type": "object", "additionalProperties": True,
                                                             "properties": {"action": {"type": "string"}}},
                                                            required=False),
                                  "responses": {**_responses(any_object, "400", "401", "413"),
                                                "501": {"description": "START_TRAINING: training is not offered",
                                                        "content": {"application/json": {
                                                            "schema": {"$ref": "#/components/schemas/Error"}}}}}}},
            "/train": {"post": {"summary": "not offered", "responses": {
                "401": {"description": _ERROR_STATUSES["401"], "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
                "501": {"description": "training is not offered", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}}}},
            "/versions": {"get": {"summary": "model versions", "responses": _responses(versions, "401")},
                          "post": {"summary": "model versions", "responses": _responses(versions, "401")}},
        },
    }
