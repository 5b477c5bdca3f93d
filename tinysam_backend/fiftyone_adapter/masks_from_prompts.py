"""`mask_from_boxes`: prompts of an existing field → instance masks (the paper's zero-shot instance segmentation).

Box prompts come from a `Detections` field, point prompts from a `Keypoints` field (each keypoint object is one
prompt whose visible points are all foreground). For each prompt the best of TinySAM's three masks by
predicted IoU is kept, with the prompt's label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from ..masks import DEFAULT_PROMPTS_PER_BATCH, best_masks_for_prompts
from .common import (
    Progress,
    check_collection,
    check_output_field,
    check_prompt_field,
    check_range,
    drain,
    make_predictor,
    unhidden,
    write_detections,
)
from .conversions import prompt_mask_to_detection, relative_box_to_xyxy, relative_points_to_xy

logger = logging.getLogger(__name__)


def _prompt_masks(pred, emb, prompts, size, boxes: bool, prompts_per_batch: int):
    """(len(prompts), H, W) best masks and scores for one image's prompts."""
    if boxes:
        xyxy = np.stack([relative_box_to_xyxy(d.bounding_box, size) for d in prompts])
        return best_masks_for_prompts(pred, emb, boxes=xyxy, prompts_per_batch=prompts_per_batch)
    h, w = size
    masks = np.zeros((len(prompts), h, w), dtype=bool)
    scores = np.zeros(len(prompts), dtype=np.float32)
    points = [relative_points_to_xy(k.points, size) for k in prompts]
    for n in sorted({len(p) for p in points} - {0}):  # prompts with the same number of points decode together
        rows = [i for i, p in enumerate(points) if len(p) == n]
        m, s = best_masks_for_prompts(pred, emb, point_coords=np.stack([points[i] for i in rows]),
                                      point_labels=np.ones((len(rows), n)), prompts_per_batch=prompts_per_batch)
        masks[rows], scores[rows] = m, s
    return masks, scores


def iter_mask_from_boxes(view, prompt_field: str, label_field: str, *, checkpoint=None, predictor=None,
                         overwrite: bool = False, prompts_per_batch: int = DEFAULT_PROMPTS_PER_BATCH,
                         within: Callable[[float], None] | None = None, device=None) -> Iterator[tuple[int, int]]:
    """Generator form of `mask_from_boxes`: yields (samples_done, samples_to_do); returns the summary."""
    import fiftyone as fo

    from ..config import DEFAULT_MAX_IMAGE_PIXELS
    from ..errors import ImageError
    from ..image_io import load_image

    check_collection(view)
    kind = check_prompt_field(view, prompt_field)
    check_output_field(view, label_field)
    if prompt_field == label_field:
        raise ValueError(f"label_field must differ from prompt_field, both are {prompt_field!r}")
    check_range("prompts_per_batch", prompts_per_batch, 1, None, integer=True)
    boxes = kind is fo.Detections
    list_attr = "detections" if boxes else "keypoints"
    view = unhidden(view)
    todo = view if overwrite else view.exists(label_field, False)
    ids, paths, prompt_labels = todo.values(["id", "filepath", prompt_field])
    total = len(ids)
    summary = {"label_field": label_field, "samples": 0, "skipped": 0 if overwrite else len(view) - total,
               "masks": 0, "failed": []}
    logger.info("mask_from_boxes %s → %s: %d samples to do, %d already done", prompt_field, label_field, total,
                summary["skipped"])
    yield 0, total
    if total == 0:
        return summary
    pred = make_predictor(checkpoint, predictor, device=device)
    for i, (sample_id, filepath, labels) in enumerate(zip(ids, paths, prompt_labels)):
        prompts = [] if labels is None else list(getattr(labels, list_attr, None) or [])
        dets = []
        if prompts:
            try:
                image = load_image(filepath, getattr(pred, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
            except ImageError as e:  # left unset: reported, and retried by the next run
                logger.warning("mask_from_boxes: sample %s (%s) skipped: %s", sample_id, filepath, e)
                summary["failed"].append(sample_id)
                yield i + 1, total
                continue
            size = image.shape[:2]
            emb = pred.embed(image)
            del image
            if within is not None:
                within(0.5)
            masks, scores = _prompt_masks(pred, emb, prompts, size, boxes, prompts_per_batch)
            dets = [prompt_mask_to_detection(p, m, float(s), size) for p, m, s in zip(prompts, masks, scores)]
            del emb, masks
        write_detections(view, sample_id, label_field, dets)
        summary["samples"] += 1
        summary["masks"] += len(dets)
        yield i + 1, total
    return summary


def mask_from_boxes(view, prompt_field: str, label_field: str, *, checkpoint=None, predictor=None,
                    overwrite: bool = False, prompts_per_batch: int = DEFAULT_PROMPTS_PER_BATCH,
                    progress: Progress = None, device=None) -> dict:
    """Prompts from `prompt_field` (Detections: boxes; Keypoints: points) → instance masks in `label_field`.

    For each prompt the best of TinySAM's three masks by predicted IoU is kept. Each new detection carries the
    prompt's label, its confidence (the predicted IoU when it has none), `predicted_iou` and `prompt_id`.
    Samples already done are skipped unless `overwrite` (a stopped run resumes); images that cannot be read
    are logged, left unset and reported. progress: FiftyOne's convention (None / True / False / callable).
    Returns {label_field, samples (written), skipped, masks, failed (sample ids)}.
    """
    return drain(lambda within: iter_mask_from_boxes(
        view, prompt_field, label_field, checkpoint=checkpoint, predictor=predictor, overwrite=overwrite,
        prompts_per_batch=prompts_per_batch, within=within, device=device), progress)
