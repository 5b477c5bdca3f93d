"""TinySAM behind Label Studio's `/predict`: interactive clicks → one brush mask; no context → everything mode.

A thin layer over the core: `Predictor.embed` / `Predictor.predict` for clicks, `segment_everything` for batch
pre-annotation — inside the request (`TINYSAM_LS_PREANNOTATE=sync`) or in a background thread whose predictions are
written to Label Studio through its API (`background`, see `preannotate.py`). Embeddings are cached by image identity (bounded in bytes, single flight per image), and the
low-res logits of each answered prompt are kept under (task, image, prompt history) so that the next click on the
same task refines the previous mask (SAM's `mask_input`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import PromptError
from ..predictor import ImageEmbedding, Predictor
from .brush_rle import mask_to_brush_rle
from .cache import SingleFlightCache
from .images import ImageFetcher, ImageLocation
from .label_config import LabelConfig, LabelConfigError, parse_label_config
from .preannotate import BackgroundPreAnnotator, LabelStudioPredictions, PreAnnotationJob
from .protocol import (
    ClickPrompt,
    PredictRequest,
    brush_region,
    prediction,
    prompt_from_context,
    prompt_to_pixels,
    resize_mask_nearest,
    task_image_reference,
)
from .settings import LabelStudioSettings

logger = logging.getLogger(__name__)

LOGITS_BYTES = 256 * 256 * 4
PRE_ANNOTATION_CACHE_BYTES = 64 * 1024 * 1024
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
# A background pre-annotation waits at most this long between two batches of everything-mode prompts while clicks
# are in flight, so that clicks keep the cores and the queue still moves under steady clicking.
BACKGROUND_PAUSE_S = 2.0


def model_version_for(checkpoint: str | None, override: str | None = None) -> str:
    """The version reported to Label Studio: the override, else `tinysam-<checkpoint file or dir name>`."""
    if override:
        return override
    if not checkpoint:
        return "tinysam"
    name = Path(checkpoint).name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"tinysam-{name}"


class ThreadShare:
    """Shares the worker's torch intra-op threads among the requests in flight.

    One request alone gets all of them; with n in flight each new one gets `threads // n` (at least 1), so that
    threads in use stay near the cores instead of `threads × requests` (oversubscribed OpenMP threads spin and
    slow every request down). Counts are per process: one gunicorn worker shares its own threads."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._lock = threading.Condition()
        self._active = 0

    @contextlib.contextmanager
    def request(self):
        with self._lock:
            self._active += 1
            share = max(1, self.threads // self._active)
        torch.set_num_threads(share)  # this request thread's own OpenMP / MKL thread count
        try:
            yield share
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._lock.notify_all()

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no request is in flight (True) or `timeout` seconds passed (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._active == 0, timeout)


class SegmentationBackend:
    """Answers `/predict` requests with a shared, stateless `Predictor`. Safe to call from many threads."""

    def __init__(self, predictor: Predictor, settings: LabelStudioSettings, model_version: str,
                 fetcher: ImageFetcher | None = None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.model_version = model_version
        self.fetcher = fetcher or ImageFetcher(settings, predictor.max_image_pixels)
        self.embeddings: SingleFlightCache[ImageEmbedding] = SingleFlightCache(settings.cache_bytes,
                                                                                lambda e: e.nbytes)
        self.refine_logits: SingleFlightCache[np.ndarray] = SingleFlightCache(
            settings.refine_entries * LOGITS_BYTES, lambda a: a.nbytes)
        self.pre_annotations: SingleFlightCache[list] = SingleFlightCache(PRE_ANNOTATION_CACHE_BYTES, _regions_bytes)
        self.thread_share = ThreadShare(torch.get_num_threads())  # what gunicorn's post_worker_init set
        self.warm_up_stats: dict | None = None
        self.background: BackgroundPreAnnotator | None = None
        if settings.preannotate_mode == "background":
            store = LabelStudioPredictions(settings.label_studio_url, settings.label_studio_api_key,
                                           settings.fetch_timeout)
            self.background = BackgroundPreAnnotator(self.pre_annotate_job, store, settings.preannotate_queue)

    # ---------------------------------------------------------------------------------------------- requests
    def predict(self, request: PredictRequest) -> dict:
        """A parsed `/predict` request → the response body `{"results": [...], "model_version": v}`."""
        with self.thread_share.request():
            return self._predict(request)

    def _predict(self, request: PredictRequest) -> dict:
        config = parse_label_config(request.label_config)
        if request.context_regions is not None:
            results = [self.interactive(task, request.context_regions, config) for task in request.tasks[:1]]
            results += [prediction([], self.model_version) for _ in request.tasks[1:]]
            return {"results": results, "model_version": self.model_version}
        mode = self.settings.preannotate_mode
        if mode == "off":
            return {"results": [], "model_version": self.model_version,
                    "message": "pre-annotation is turned off (TINYSAM_LS_PREANNOTATE=off or "
                               "TINYSAM_LS_BATCH_ENABLED=false); use interactive clicks"}
        tasks = request.tasks
        if self.background is not None and all(_task_id(t) is not None for t in tasks):
            return self._queue_pre_annotation(tasks, config)
        if len(tasks) > self.settings.batch_tasks_per_request:
            # Label Studio asks again one task per request when it gets a single answer for several tasks, which
            # gives every task its own 100 s timeout. The first task's answer is cached for that second request.
            logger.info("batch of %d tasks: answering the first, Label Studio will ask one task at a time", len(tasks))
            tasks = tasks[:1]
        return {"results": [self.pre_annotate(task, config) for task in tasks], "model_version": self.model_version}

    def interactive(self, task: dict, regions: tuple[dict, ...], config: LabelConfig) -> dict:
        """One task with the annotator's regions → one brush region for the prompt they form."""
        prompt = prompt_from_context(regions, config, self.settings.max_points)
        h, w = prompt.original_size
        if h * w > self.predictor.max_image_pixels:
            raise PromptError(f"original_width x original_height = {w}x{h} is more than the limit of "
                              f"{self.predictor.max_image_pixels} pixels")
        brush = config.brush_for(prompt.to_name, prompt.label)
        location = self.fetcher.locate(task_image_reference(task, config, prompt.to_name))
        emb = self.embedding(location)
        _check_shown_size(prompt.original_size, emb.original_size)
        mask, score = self.segment_prompt(emb, prompt, task_key=task.get("id"), image_key=location.identity)
        if mask.shape != prompt.original_size:
            logger.warning("image %s decodes to %s but Label Studio shows %s; resizing the mask",
                           location.identity, mask.shape, prompt.original_size)
            mask = resize_mask_nearest(mask, prompt.original_size)
        region = brush_region(mask, brush, prompt.to_name, config.brush_label(brush, prompt.label), score)
        return prediction([region], self.model_version, score)

    def segment_prompt(self, emb: ImageEmbedding, prompt: ClickPrompt, task_key, image_key: str
                       ) -> tuple[np.ndarray, float]:
        """The best of TinySAM's three masks for a prompt, refined by the previous click's logits when known."""
        coords, labels, box = prompt_to_pixels(prompt, emb.original_size)
        previous = prompt.previous_history()
        mask_input = None
        if previous is not None:
            mask_input = self.refine_logits.get((str(task_key), image_key, previous))
        masks, scores, low_res = self.predictor.predict_best(
            emb, None if coords is None else coords[None], None if labels is None else labels[None],
            None if box is None else box[None], None if mask_input is None else mask_input[None, None])
        # A copy: the cache holds (and counts) exactly these 256 KiB, not a view keeping a larger batch alive.
        self.refine_logits.put((str(task_key), image_key, prompt.history), low_res[0].copy())
        return masks[0], float(scores[0])

    def _queue_pre_annotation(self, tasks: list[dict], config: LabelConfig) -> dict:
        """Background mode: queue the tasks, answer at once with no prediction (Label Studio then stores none and
        the page opens); the predictions reach Label Studio through its API when computed."""
        _brush_images(config)  # a config TinySAM cannot pre-annotate is refused now (422), not in the background
        outcomes = [self.background.submit(PreAnnotationJob(_task_id(t), t, config, self.model_version))
                    for t in tasks]
        queued = outcomes.count("queued")
        logger.info("pre-annotation: %d task(s) queued, %d already queued, %d refused (queue full)", queued,
                    outcomes.count("duplicate"), outcomes.count("full"))
        return {"results": [], "model_version": self.model_version,
                "message": f"pre-annotation of {len(tasks)} task(s) runs in the background "
                           f"({queued} newly queued); predictions are written to Label Studio when ready"}

    def pre_annotate_job(self, job: PreAnnotationJob) -> dict:
        """A background job: encode with the worker's share of threads like a request, then decode everything mode
        with one thread, pausing between batches of prompts while clicks are in flight (clicks come first)."""
        for to_name in _brush_images(job.config):
            location = self.fetcher.locate(task_image_reference(job.task, job.config, to_name))
            with self.thread_share.request():
                self.embedding(location)
        torch.set_num_threads(1)  # this thread's intra-op threads: one core stays free for clicks

        def yield_to_clicks(done: int, total: int) -> None:
            self.thread_share.wait_until_idle(BACKGROUND_PAUSE_S)

        return self.pre_annotate(job.task, job.config, progress=yield_to_clicks)

    def pre_annotate(self, task: dict, config: LabelConfig, progress=None) -> dict:
        """Everything mode on every Image of the task that has a brush tag: one brush region per mask.
        progress(done, planned) is called between batches of everything-mode prompts."""
        regions: list[dict] = []
        for to_name in _brush_images(config):
            location = self.fetcher.locate(task_image_reference(task, config, to_name))
            brush = config.brush_for(to_name)
            label = config.brush_label(brush, None)
            key = (location.identity, brush.name, to_name, label, tuple(sorted(self.settings.everything_params().items())),
                   self.settings.batch_max_regions, self.settings.batch_min_area)
            found, _ = self.pre_annotations.get_or_compute(
                key, functools.partial(self._everything_regions, location, brush, to_name, label, progress))
            regions.extend(found)
        return prediction(regions, self.model_version)

    def _everything_regions(self, location: ImageLocation, brush, to_name: str, label: str | None,
                            progress=None) -> list[dict]:
        from ..everything import segment_everything
        from ..masks import decode_rle

        start = time.perf_counter()
        emb = self.embedding(location)
        records = segment_everything(self.predictor, emb, progress=progress, **self.settings.everything_params())
        h, w = emb.original_size
        min_area = self.settings.batch_min_area * h * w
        kept = [r for r in records if r["area"] >= min_area]
        kept.sort(key=lambda r: -float(r["predicted_iou"]))
        kept = kept[: self.settings.batch_max_regions]
        regions = []
        for i, record in enumerate(kept):
            regions.append(brush_region(decode_rle(record["segmentation"]), brush, to_name, label, float(record["predicted_iou"]),
                                        region_id=f"tinysam-{i}"))
        logger.info("everything mode on %s: %d masks, %d kept, %.2f s", location.identity, len(records),
                    len(regions), time.perf_counter() - start)
        return regions

    # ------------------------------------------------------------------------------------------------ images
    def embedding(self, location: ImageLocation) -> ImageEmbedding:
        """The image's embedding, encoded once per image identity while it stays in the cache."""
        emb, _ = self.embeddings.get_or_compute(location.identity,
                                                lambda: self.predictor.embed(self.fetcher.load(location)))
        return emb

    def warm_up(self) -> dict:
        """One encode and the click decodes (point; point + box + previous logits) on a synthetic image, through the
        paths a click takes (low-rank decoder, upscale, brush RLE), nothing cached. Run before the worker reports
        ready: the first encode and decode of a process pay one-off costs (kernel selection, allocator growth,
        lazy imports), which would otherwise land on the first annotator's click."""
        start = time.perf_counter()
        yy, xx = np.mgrid[0:480, 0:640]
        image = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) % 256], axis=-1).astype(np.uint8)
        with self.thread_share.request():
            emb = self.predictor.embed(image)
            encoded = time.perf_counter()
            point, label = np.array([[[320.0, 240.0]]]), np.array([[1]])
            _, _, low_res = self.predictor.predict_best(emb, point, label)
            masks, _, _ = self.predictor.predict_best(emb, point, label, np.array([[160.0, 120.0, 480.0, 360.0]]),
                                                      low_res[:, None])
            mask_to_brush_rle(masks[0])
        self.warm_up_stats = {"done": True, "encodes": 1, "decodes": 2,
                              "encode_seconds": round(encoded - start, 3),
                              "seconds": round(time.perf_counter() - start, 3)}
        logger.info("warm-up: encode %.2f s, two decodes %.2f s", encoded - start, time.perf_counter() - encoded)
        return self.warm_up_stats

    def stats(self) -> dict:
        out = {"embedding_cache": vars(self.embeddings.stats()), "refine_cache": vars(self.refine_logits.stats()),
               "warm_up": self.warm_up_stats or {"done": False},
               "preannotate": {"mode": self.settings.preannotate_mode}}
        if self.background is not None:
            out["preannotate"].update(self.background.stats())
        return out


def _brush_images(config: LabelConfig) -> list[str]:
    """The Image tags that have a brush tag: what pre-annotation segments."""
    targets = [name for name in config.images if any(name in b.to_names for b in config.brushes)]
    if not targets:
        raise LabelConfigError("the labeling config has no BrushLabels (or Brush) tag bound to an Image; "
                               f"Image tags: {sorted(config.images)}")
    return targets


def _task_id(task: dict) -> int | None:
    """Label Studio's task id (an integer), needed to write a prediction back; None when the task has none."""
    value = task.get("id") if isinstance(task, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_shown_size(shown: tuple[int, int], decoded: tuple[int, int]) -> None:
    """Label Studio's original_width/height are the image's own; the mask is resized to them when they differ a
    little, but a claimed size more than twice the decoded image per side would only inflate the mask and its RLE."""
    (sh, sw), (dh, dw) = shown, decoded
    if sh > 2 * dh or sw > 2 * dw:
        raise PromptError(f"the regions give original_width x original_height = {sw}x{sh} but the image decodes to "
                          f"{dw}x{dh}; sizes more than twice the image's per side are refused")


def _regions_bytes(regions: list) -> int:
    return 1024 + sum(r["value"]["rle"].nbytes + 512 for r in regions)
