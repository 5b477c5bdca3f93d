"""The WSGI app (Flask) speaking Label Studio's ML-backend protocol.

Endpoints: `GET /health` (readiness: 200 once the model is loaded, 503 while loading or after a failed load),
`GET /livez` (liveness), `POST /setup`, `POST /predict`, `POST /webhook`, `POST /train` (not offered: 501),
`GET /versions`, `GET /`. Every error is a JSON body `{"status": code, "error": name, "message": text}`.

Serve it with gunicorn (`tinysam serve`, or `gunicorn -c python:tinysam_backend.label_studio.gunicorn_conf
'tinysam_backend.label_studio.app:create_app()'`). The app factory loads nothing; the model is loaded after
fork, in each worker, by `ModelSlot.start_loading()` (gunicorn's `post_worker_init`, or the first request).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..config import Settings
from ..errors import TinySAMError
from .backend import SegmentationBackend, model_version_for
from .images import ImageFetchError
from .label_config import LabelConfigError, parse_label_config
from .openapi import openapi_spec
from .protocol import RequestError, dumps, parse_predict_request
from .settings import LabelStudioSettings

logger = logging.getLogger(__name__)

EXTENSION = "tinysam"
OPEN_PATHS = ("/health", "/livez")


class ModelNotReady(TinySAMError):
    """The model is still loading, or failed to load."""


class ModelSlot:
    """Holds the backend of one worker; loads it once, in a background thread, and reports its state."""

    def __init__(self, loader: Callable[[], SegmentationBackend] | None = None,
                 backend: SegmentationBackend | None = None) -> None:
        self._loader = loader
        self._backend = backend
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None
        self.load_seconds: float | None = None

    @property
    def state(self) -> str:
        if self._backend is not None:
            return "ready"
        if self._error is not None:
            return "failed"
        return "loading" if self._thread is not None else "idle"

    @property
    def error(self) -> str | None:
        return self._error

    def start_loading(self) -> None:
        with self._lock:
            if self._backend is not None or self._thread is not None or self._loader is None:
                return
            self.started_at = time.perf_counter()
            self._thread = threading.Thread(target=self._load, name="tinysam-model-loader", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._backend is not None

    def _load(self) -> None:
        try:
            backend = self._loader()
        except Exception as e:  # reported by /health and every /predict, the worker keeps serving
            logger.exception("loading the model failed")
            self._error = f"{type(e).__name__}: {e}"
            return
        self.load_seconds = time.perf_counter() - (self.started_at or time.perf_counter())
        self._backend = backend
        logger.info("model ready (%s) after %.1f s", backend.model_version, self.load_seconds)

    def get(self) -> SegmentationBackend:
        if self._backend is not None:
            return self._backend
        self.start_loading()
        if self._error is not None:
            raise ModelNotReady(f"the model failed to load: {self._error}")
        raise ModelNotReady("the model is still loading; retry in a few seconds")


def build_backend(settings: Settings, ls_settings: LabelStudioSettings) -> SegmentationBackend:
    """Load the configured checkpoint, wrap it and warm it up: one encode and two click decodes on a synthetic image
    (called in the worker, after fork, before the worker reports ready), so that the first click costs one encode."""
    from ..checkpoint import load_model
    from ..predictor import Predictor

    model = load_model(settings.checkpoint, settings=settings)
    predictor = Predictor(model, settings.max_image_pixels)
    backend = SegmentationBackend(predictor, ls_settings,
                                  model_version_for(settings.checkpoint, ls_settings.model_version))
    backend.warm_up()
    return backend


ENGINE_FIELDS = ("device", "engine", "precision", "reason", "cpu_flags", "max_cpu_isa")


def public_engine_info(model) -> dict:
    """What `load_model` chose to run (device, engine, precision and why, the CPU flags it went by), for `/health`:
    open to unauthenticated probes, so the cached graph's path is left out."""
    info = getattr(model, "engine_info", None) or {}
    return {k: info[k] for k in ENGINE_FIELDS if k in info}


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(body), status=status, mimetype="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    name = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "payload_too_large", 422: "unprocessable", 500: "internal_error", 501: "not_implemented",
            502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout"}.get(status, "error")
    return _json({"status": status, "error": name, "message": message}, status, headers)


def _read_json(optional: bool = False) -> Any:
    raw = request.get_data(cache=False)
    if not raw.strip():
        if optional:
            return {}
        raise RequestError("the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        msg = str(e) if not isinstance(e, RecursionError) else "nesting too deep"
        raise RequestError(f"the request body is not valid JSON: {msg[:200]}") from None


def create_app(settings: Settings | None = None, ls_settings: LabelStudioSettings | None = None,
               backend: SegmentationBackend | None = None) -> Flask:
    """The Flask app. With `backend` given (tests, benchmarks) it is ready at once; otherwise the model loads when
    `app.extensions["tinysam"].start_loading()` is called (gunicorn's post_worker_init) or on the first request."""
    settings = settings or Settings.from_env()
    ls_settings = ls_settings or LabelStudioSettings.from_env()
    model_version = backend.model_version if backend is not None else model_version_for(settings.checkpoint,
                                                                                          ls_settings.model_version)
    slot = ModelSlot(loader=lambda: build_backend(settings, ls_settings), backend=backend)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = ls_settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = slot
    basic_auth = ls_settings.basic_auth

    @app.before_request
    def _guard() -> Response | None:
        slot.start_loading()  # no-op once started; covers WSGI servers without gunicorn's post_worker_init
        if basic_auth is None or request.path in OPEN_PATHS:
            return None
        if not _basic_auth_ok(request.headers.get("Authorization", ""), basic_auth):
            return error_response(401, "basic authentication required (BASIC_AUTH_USER / BASIC_AUTH_PASS are set "
                                       "on the backend; set the same in Label Studio's model connection)",
                                  {"WWW-Authenticate": 'Basic realm="tinysam"'})
        return None

    @app.get("/")
    def index() -> Response:
        return _json({"name": "tinysam-backend", "model_version": model_version, "model_state": slot.state,
                      "endpoints": ["GET /health", "GET /livez", "POST /setup", "POST /predict", "POST /webhook",
                                    "GET /versions", "GET /openapi.json"],
                      "training": False})

    @app.get("/openapi.json")
    def openapi() -> Response:
        return _json(openapi_spec(ls_settings))

    @app.get("/livez")
    def livez() -> Response:
        return _json({"status": "alive"})

    @app.get("/health")
    def health() -> Response:
        state = slot.state
        body: dict[str, Any] = {"status": "UP" if state == "ready" else ("ERROR" if state == "failed" else "LOADING"),
                                "model_class": "TinySAM", "model_version": model_version,
                                "model_ready": state == "ready"}
        if state == "failed":  # open to anyone: what is wrong, without the server's paths (the log has them)
            body["error"] = without_paths(slot.error or "", (settings.checkpoint, str(settings.cache_dir)))
        if state == "ready":
            backend = slot.get()
            body["stats"] = backend.stats()
            body["engine"] = public_engine_info(backend.predictor.model)
            return _json(body)
        return _json(body, 503, {"Retry-After": "5"})

    @app.post("/setup")
    def setup() -> Response:
        data = _read_json(optional=True)
        if not isinstance(data, dict):
            raise RequestError(f"expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema is not None:
            config = parse_label_config(schema)
            if not config.brushes:
                raise LabelConfigError("the labeling config has no BrushLabels tag: TinySAM answers with brush masks")
        return _json({"model_version": model_version})

    @app.post("/predict")
    def predict() -> Response:
        parsed = parse_predict_request(_read_json())
        return _json(slot.get().predict(parsed))

    @app.post("/webhook")
    def webhook() -> Response:
        data = _read_json(optional=True)
        action = data.get("action") if isinstance(data, dict) else None
        if action == "START_TRAINING":
            return error_response(501, "training is not offered by the TinySAM backend; it segments with the "
                                       "pretrained model and does not learn from annotations")
        return _json({"status": "ok", "message": f"event {str(action)[:64]} acknowledged; the TinySAM backend does "
                                                 "not train, so events change nothing"})

    @app.post("/train")
    def train() -> Response:
        return error_response(501, "training is not offered by the TinySAM backend")

    @app.route("/versions", methods=["GET", "POST"])
    def versions() -> Response:
        return _json({"versions": [model_version], "model_version": model_version})

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        message = e.description or e.name
        if e.code == 413:
            message = (f"request body larger than the limit of {ls_settings.max_body_bytes} bytes "
                       "(TINYSAM_LS_MAX_BODY_BYTES)")
        return error_response(e.code or 500, message)

    @app.errorhandler(RequestError)
    def _request_error(e: RequestError) -> Response:
        return error_response(e.status, str(e))

    @app.errorhandler(ImageFetchError)
    def _fetch_error(e: ImageFetchError) -> Response:
        return error_response(e.status, str(e))

    @app.errorhandler(ModelNotReady)
    def _not_ready(e: ModelNotReady) -> Response:
        return error_response(503, without_paths(str(e), (settings.checkpoint, str(settings.cache_dir))),
                              {"Retry-After": "5"})

    @app.errorhandler(TinySAMError)
    def _domain_error(e: TinySAMError) -> Response:
        # PromptError, LabelConfigError, ImageError, BrushRLEError…: the input cannot be segmented as given.
        return error_response(422, str(e))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, f"internal error ({type(e).__name__}); see the backend's log")

    return app


_ABSOLUTE_PATH = re.compile(r"(?<![^\s'\"(=\[])/[^\s'\"),\]]+")


def without_paths(message: str, known: tuple[str | None, ...] = ()) -> str:
    """`message` with file paths cut to their last component (`/srv/models/x.pth` → `x.pth`): first the `known`
    ones (they may hold spaces), then anything that looks like an absolute path."""
    for path in known:
        if path:
            for form in {str(path), str(Path(path).expanduser()), str(Path(path).expanduser().resolve())}:
                if len(form) > 1:
                    message = message.replace(form, Path(form).name)
    return _ABSOLUTE_PATH.sub(lambda m: m.group().rstrip("/").rsplit("/", 1)[-1] or "/", message)


def _basic_auth_ok(header: str, expected: tuple[str, str]) -> bool:
    if not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
    ok_pass = hmac.compare_digest(password.encode(), expected[1].encode())
    return ok_user and ok_pass
