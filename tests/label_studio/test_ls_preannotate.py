"""Pre-annotation modes and the worker's warm-up, without Label Studio (the real Label Studio path — a task opened
with no prediction, the prediction written back later — is in test_ls_e2e_label_studio.py).

The queue tests give `BackgroundPreAnnotator` an in-memory prediction store: they check the queue's own rules
(each task once, bounded, a failing task does not stop the others, no work for a task that already holds a
prediction), not Label Studio's API.
"""

from __future__ import annotations

import threading
import time

import pytest
from ls_helpers import LABEL_CONFIG, keypoint, predict_body

from tinysam_backend.config import Settings
from tinysam_backend.label_studio.app import create_app
from tinysam_backend.label_studio.backend import SegmentationBackend
from tinysam_backend.label_studio.label_config import parse_label_config
from tinysam_backend.label_studio.preannotate import BackgroundPreAnnotator, PreAnnotationJob
from tinysam_backend.label_studio.settings import LabelStudioSettings, SettingsError

IMG = "/data/upload/1/img{}.png"
CONFIG = parse_label_config(LABEL_CONFIG)


# ------------------------------------------------------------------------------------------------- settings
def test_mode_defaults_to_background_only_when_predictions_can_be_written():
    both = {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k" * 40}
    assert LabelStudioSettings.from_env(both).preannotate_mode == "background"
    assert LabelStudioSettings.from_env({"LABEL_STUDIO_URL": "http://ls:8080"}).preannotate_mode == "sync"
    assert LabelStudioSettings.from_env({}).preannotate_mode == "sync"
    assert LabelStudioSettings.from_env({**both, "TINYSAM_LS_PREANNOTATE": "sync"}).preannotate_mode == "sync"
    assert LabelStudioSettings.from_env({**both, "TINYSAM_LS_PREANNOTATE": "OFF"}).preannotate_mode == "off"
    assert LabelStudioSettings.from_env({**both, "TINYSAM_LS_BATCH_ENABLED": "false"}).preannotate_mode == "off"
    assert LabelStudioSettings.from_env({**both, "TINYSAM_LS_PREANNOTATE_QUEUE": "7"}).preannotate_queue == 7


def test_mode_errors_name_what_is_missing():
    with pytest.raises(SettingsError, match="LABEL_STUDIO_URL=unset, LABEL_STUDIO_API_KEY=unset"):
        LabelStudioSettings.from_env({"TINYSAM_LS_PREANNOTATE": "background"})
    with pytest.raises(SettingsError, match=r"one of background, sync, off, got 'later'"):
        LabelStudioSettings.from_env({"TINYSAM_LS_PREANNOTATE": "later"})
    with pytest.raises(SettingsError, match="TINYSAM_LS_PREANNOTATE_QUEUE must be >= 1"):
        LabelStudioSettings.from_env({"TINYSAM_LS_PREANNOTATE_QUEUE": "0"})


def test_sync_and_off_modes_answer_inside_the_request(tiny_backend, media_dir):
    sync = create_app(Settings(), tiny_backend.settings, backend=tiny_backend).test_client()
    answer = sync.post("/predict", json=predict_body(IMG.format(5), None)).get_json()
    assert len(answer["results"]) == 1 and answer["results"][0]["result"]  # computed in the request
    off = LabelStudioSettings.from_env({"LABEL_STUDIO_MEDIA_DIR": str(media_dir), "TINYSAM_LS_PREANNOTATE": "off"})
    tiny_backend.settings = off
    answer = create_app(Settings(), off, backend=tiny_backend).test_client().post(
        "/predict", json=predict_body(IMG.format(5), None)).get_json()
    assert answer["results"] == [] and "TINYSAM_LS_PREANNOTATE=off" in answer["message"]


# ---------------------------------------------------------------------------------------------------- queue
class MemoryStore:
    """Predictions kept in a dict, standing in for Label Studio's prediction table in the queue's own tests."""

    def __init__(self) -> None:
        self.predictions: dict[int, list[dict]] = {}
        self.lock = threading.Lock()

    def has_prediction(self, task_id: int, model_version: str) -> bool:
        with self.lock:
            return any(p["model_version"] == model_version for p in self.predictions.get(task_id, []))

    def create(self, task_id: int, prediction: dict) -> int:
        with self.lock:
            self.predictions.setdefault(task_id, []).append(prediction)
            return sum(len(v) for v in self.predictions.values())


def _job(task_id: int, image: int = 0, version: str = "tinysam-test") -> PreAnnotationJob:
    return PreAnnotationJob(task_id, {"id": task_id, "data": {"image": IMG.format(image)}}, CONFIG, version)


def test_background_queue_computes_each_task_once_and_writes_what_sync_mode_answers(tiny_backend):
    store = MemoryStore()
    gate = threading.Event()
    computed: list[int] = []

    def compute(job):
        gate.wait(10)
        computed.append(job.task_id)
        return tiny_backend.pre_annotate_job(job)

    queue = BackgroundPreAnnotator(compute, store, max_waiting=2)
    assert queue.submit(_job(1, 1)) == "queued"  # running (blocked on the gate) or waiting
    assert queue.submit(_job(1, 1)) == "duplicate"  # the same task opened again: not queued twice
    assert queue.submit(_job(2, 2)) == "queued"
    deadline = time.monotonic() + 10
    while queue.stats()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.submit(_job(3, 3)) == "queued"  # task 1 runs, 2 and 3 wait: the bound of 2 is reached
    assert queue.submit(_job(4, 4)) == "full"
    assert queue.submit(_job(1, 1, version="other-model")) == "full"
    gate.set()
    assert queue.wait_idle(60)
    assert sorted(computed) == [1, 2, 3]
    stats = queue.stats()
    assert (stats["queued"], stats["duplicates"], stats["refused"], stats["written"], stats["failed"]) == (3, 1, 2, 3, 0)
    # What was written equals what sync mode answers for the same task.
    for task_id in (1, 2, 3):
        [written] = store.predictions[task_id]
        expected = tiny_backend.pre_annotate({"id": task_id, "data": {"image": IMG.format(task_id)}}, CONFIG)
        assert written["model_version"] == "tinysam-test"
        assert [r["value"]["rle"].tobytes() for r in written["result"]] == \
               [r["value"]["rle"].tobytes() for r in expected["result"]]
        assert written["result"]


def test_background_queue_skips_tasks_with_a_prediction_and_survives_failures(tiny_backend):
    store = MemoryStore()
    store.create(5, {"result": [], "model_version": "tinysam-test"})
    computed: list[int] = []

    def compute(job):
        computed.append(job.task_id)
        return tiny_backend.pre_annotate_job(job)

    queue = BackgroundPreAnnotator(compute, store, max_waiting=10)
    queue.submit(_job(5, 5))  # already predicted by this model version (another worker, a sync answer)
    bad = PreAnnotationJob(6, {"id": 6, "data": {"image": "/data/upload/1/missing.png"}}, CONFIG, "tinysam-test")
    queue.submit(bad)
    queue.submit(_job(7, 7))
    assert queue.wait_idle(60)
    assert computed == [6, 7]  # task 5 was not computed at all
    stats = queue.stats()
    assert (stats["skipped"], stats["failed"], stats["written"]) == (1, 1, 1)
    assert len(store.predictions[5]) == 1 and 6 not in store.predictions and len(store.predictions[7]) == 1


def test_background_job_pauses_while_clicks_are_in_flight(tiny_backend):
    store = MemoryStore()
    queue = BackgroundPreAnnotator(tiny_backend.pre_annotate_job, store, max_waiting=4)
    with tiny_backend.thread_share.request():  # a click in flight for the whole time
        queue.submit(_job(8, 6))
        time.sleep(1.0)
        assert not store.predictions  # the encode ran beside the click, the everything-mode batches wait
    assert queue.wait_idle(60) and store.predictions[8][0]["result"]


def test_backend_in_background_mode_answers_without_computing(tiny_predictor, media_dir):
    settings = LabelStudioSettings.from_env({"LABEL_STUDIO_MEDIA_DIR": str(media_dir),
                                             "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k"})
    backend = SegmentationBackend(tiny_predictor, settings, "tinysam-test")
    assert backend.background is not None
    backend.background.store = MemoryStore()
    client = create_app(Settings(), settings, backend=backend).test_client()
    body = predict_body(IMG.format(4), None, task_id=41)
    body["tasks"].append({"id": 42, "data": {"image": IMG.format(3)}})
    answer = client.post("/predict", json=body).get_json()
    assert answer["results"] == [] and "background" in answer["message"]
    assert backend.background.wait_idle(60)
    assert sorted(backend.background.store.predictions) == [41, 42]
    # Interactive clicks are still answered in the request.
    click = client.post("/predict", json=predict_body(IMG.format(4), [keypoint(50, 50, 64, 48)], task_id=41))
    assert click.get_json()["results"][0]["result"]
    # A config that cannot be pre-annotated is refused at once, not in the background.
    bad = predict_body(IMG.format(4), None, label_config='<View><Image name="image" value="$image"/></View>')
    r = client.post("/predict", json=bad)
    assert r.status_code == 422 and "no BrushLabels" in r.get_json()["message"]
    health = client.get("/health").get_json()
    assert health["stats"]["preannotate"]["mode"] == "background" and health["stats"]["preannotate"]["written"] == 2


# -------------------------------------------------------------------------------------------------- warm-up
def test_worker_reports_ready_only_after_the_warm_up(parity_checkpoint):
    client = create_app(Settings(checkpoint=str(parity_checkpoint)), LabelStudioSettings()).test_client()
    first = client.get("/health")  # starts loading
    assert first.status_code == 503
    deadline = time.monotonic() + 300
    while (r := client.get("/health")).status_code != 200:
        assert r.get_json()["status"] == "LOADING" and time.monotonic() < deadline, r.get_json()
        time.sleep(0.1)
    stats = r.get_json()["stats"]
    warm = stats["warm_up"]
    assert warm["done"] is True and (warm["encodes"], warm["decodes"]) == (1, 2)
    assert 0 < warm["encode_seconds"] <= warm["seconds"]
    assert stats["embedding_cache"]["entries"] == 0 and stats["refine_cache"]["entries"] == 0  # nothing cached
