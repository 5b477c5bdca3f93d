"""Background pre-annotation: answer Label Studio at once, segment everything later, write the prediction back.

Why: with Label Studio's defaults ("Use predictions to prelabel tasks" on), opening a task that has no prediction
makes Label Studio call `/predict` inside the request that loads the task (`GET /api/tasks/<id>/`) and wait for the
answer, up to 100 s. Segment-everything takes tens of seconds on a small CPU, so the labelling page stayed greyed
that long. In `background` mode (`TINYSAM_LS_PREANNOTATE`) a `/predict` without interactive context is answered
with no prediction at once, its tasks are queued here, and one thread per worker process computes each task's
masks and writes them to Label Studio as a prediction (`POST /api/predictions/`, with the configured
`LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY`). The annotator sees the page at once and the prediction the next
time the task is loaded; "Retrieve predictions" on many tasks returns at once and the predictions arrive one by one.

The queue is bounded, and a task (id, model version) that is waiting or running is not queued twice. Before
computing and again before writing, Label Studio is asked whether the task already holds a prediction of that
model version (written by another worker process, or by a synchronous answer); then nothing more is done. Queued
work lives in the worker's memory: a restarted worker forgets it, and Label Studio asks again when the task is
next opened (it asks for every task without a prediction).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from ..errors import TinySAMError
from .images import LabelStudioAuth, parse_image_url
from .label_config import LabelConfig
from .protocol import dumps

logger = logging.getLogger(__name__)


class LabelStudioAPIError(TinySAMError):
    """Label Studio's REST API could not be reached or refused a call."""


@dataclass(frozen=True)
class PreAnnotationJob:
    """One task to pre-annotate: the task as Label Studio sent it, the project's parsed labeling config."""

    task_id: int
    task: dict = field(compare=False, hash=False)
    config: LabelConfig = field(compare=False, hash=False)
    model_version: str = ""

    @property
    def key(self) -> tuple[int, str]:
        return self.task_id, self.model_version


class PredictionStore(Protocol):
    def has_prediction(self, task_id: int, model_version: str) -> bool: ...

    def create(self, task_id: int, prediction: dict) -> int: ...


class LabelStudioPredictions:
    """A task's predictions through Label Studio's REST API: `GET /api/predictions/?task=<id>` and
    `POST /api/predictions/`. `LABEL_STUDIO_URL` is parsed once, by the rules task URLs follow, and every call
    connects to exactly that host and port; authentication is the image fetcher's (`LabelStudioAuth`: legacy token
    or personal access token). Thread-safe."""

    def __init__(self, label_studio_url: str, api_key: str | None, timeout: float) -> None:
        self.origin = parse_image_url(label_studio_url, "LABEL_STUDIO_URL")
        self.timeout = timeout
        self.auth = LabelStudioAuth(self.origin, api_key, timeout)
        pool_class = HTTPSConnectionPool if self.origin.scheme == "https" else HTTPConnectionPool
        self._pool = pool_class(self.origin.host, self.origin.port, maxsize=2, block=False)
        self._prefix = self.origin.path.rstrip("/")  # Label Studio served under a sub-path

    def _request(self, method: str, path: str, query: dict | None = None, body: bytes | None = None):
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        where = f"{self.origin.redacted()} ({method} {path})"
        for attempt in range(2):
            headers = {**self.auth.header(), "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                resp = self._pool.urlopen(method, target, body=body, headers=headers, redirect=False, retries=False,
                                          timeout=urllib3.Timeout(connect=self.timeout, read=3 * self.timeout))
            except (Urllib3HTTPError, OSError) as e:
                raise LabelStudioAPIError(f"could not reach Label Studio at {where}: {type(e).__name__}") from e
            if resp.status == 401 and self.auth.is_pat and attempt == 0:
                self.auth.invalidate()  # the access token expired early: exchange the personal access token again
                continue
            return resp
        return resp

    def has_prediction(self, task_id: int, model_version: str) -> bool:
        resp = self._request("GET", "/api/predictions/", query={"task": task_id})
        if resp.status != 200:
            raise LabelStudioAPIError(f"GET /api/predictions/?task={task_id} answered {resp.status}, expected 200: "
                                      f"{resp.data[:200]!r}")
        try:
            listed = json.loads(resp.data)
        except ValueError as e:
            raise LabelStudioAPIError(f"GET /api/predictions/?task={task_id} did not answer JSON") from e
        if isinstance(listed, dict):  # a paginated answer
            listed = listed.get("results", [])
        return any(isinstance(p, dict) and p.get("task") in (task_id, None) and p.get("model_version") == model_version
                   for p in listed)

    def create(self, task_id: int, prediction: dict) -> int:
        body = dumps({"task": task_id, "result": prediction["result"], "score": prediction.get("score"),
                      "model_version": prediction["model_version"]})
        resp = self._request("POST", "/api/predictions/", body=body)
        if resp.status != 201:
            raise LabelStudioAPIError(f"POST /api/predictions/ for task {task_id} answered {resp.status}, expected "
                                      f"201: {resp.data[:300]!r}")
        try:
            return int(json.loads(resp.data)["id"])
        except (ValueError, KeyError, TypeError) as e:
            raise LabelStudioAPIError("POST /api/predictions/ answered without the new prediction's id") from e


@dataclass
class PreAnnotationStats:
    queued: int = 0
    duplicates: int = 0  # asked for again while waiting or running: not queued twice
    refused: int = 0  # the queue was full
    written: int = 0
    skipped: int = 0  # the task already held a prediction of this model version
    failed: int = 0
    waiting: int = 0
    running: int = 0
    last_seconds: float | None = None


class BackgroundPreAnnotator:
    """A bounded queue of pre-annotation jobs and the one thread that works through it (started on the first job).

    compute(job) → the task's prediction `{"result": [...], "score": s, "model_version": v}`; store writes it.
    """

    def __init__(self, compute: Callable[[PreAnnotationJob], dict], store: PredictionStore, max_waiting: int) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.compute = compute
        self.store = store
        self.max_waiting = max_waiting
        self._waiting: deque[PreAnnotationJob] = deque()
        self._keys: set[tuple[int, str]] = set()  # waiting or running
        self._running = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stats = PreAnnotationStats()

    def submit(self, job: PreAnnotationJob) -> str:
        """Queue a job: "queued", "duplicate" (already waiting or running) or "full" (the queue is at its bound)."""
        with self._cond:
            if job.key in self._keys:
                self._stats.duplicates += 1
                return "duplicate"
            if len(self._waiting) >= self.max_waiting:
                self._stats.refused += 1
                logger.warning("pre-annotation queue full (%d tasks, TINYSAM_LS_PREANNOTATE_QUEUE): task %s not "
                               "queued; Label Studio asks again when it is next opened", self.max_waiting, job.task_id)
                return "full"
            self._waiting.append(job)
            self._keys.add(job.key)
            self._stats.queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="tinysam-preannotate", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return "queued"

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is waiting or running; False if `timeout` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stats(self) -> dict:
        with self._cond:
            self._stats.waiting = len(self._waiting)
            self._stats.running = self._running
            return dict(vars(self._stats))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                job = self._waiting.popleft()
                self._running = 1
            start = time.perf_counter()
            outcome = "failed"
            try:
                outcome = self._process(job, start)
            except (TinySAMError, ValueError) as e:  # image fetch, config, Label Studio API: say what, no trace
                logger.warning("pre-annotation of task %s failed: %s", job.task_id, e)
            except Exception:
                logger.exception("pre-annotation of task %s failed", job.task_id)
            finally:
                with self._cond:
                    setattr(self._stats, outcome, getattr(self._stats, outcome) + 1)
                    self._stats.last_seconds = time.perf_counter() - start
                    self._keys.discard(job.key)
                    self._running = 0
                    self._cond.notify_all()

    def _process(self, job: PreAnnotationJob, start: float) -> str:
        if self.store.has_prediction(job.task_id, job.model_version):
            return "skipped"
        prediction = self.compute(job)
        if self.store.has_prediction(job.task_id, job.model_version):  # written meanwhile by another worker
            return "skipped"
        prediction_id = self.store.create(job.task_id, prediction)
        logger.info("pre-annotation of task %s written to Label Studio as prediction %s (%d regions, %.1f s)",
                    job.task_id, prediction_id, len(prediction["result"]), time.perf_counter() - start)
        return "written"
