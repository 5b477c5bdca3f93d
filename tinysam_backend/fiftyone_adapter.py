"""FiftyOne adapter: TinySAM over a dataset or view, outside the App or behind the plugin's operators.

Three library functions, whose names and parameters the operators of `fiftyone_plugin/` reuse:

- `auto_mask`: segment-everything (hierarchical, paper §3.4, or dense) on every sample → a `Detections`
  field of instance masks (`confidence` = predicted IoU, `stability_score` and `area` as attributes).
  Masks live in the sample (`Detection.mask`, cropped to the box) or, with `output_dir`, as PNGs on disk
  (`Detection.mask_path`), which keeps documents small for big datasets. Samples already done are skipped
  unless `overwrite`, so an interrupted run resumes where it stopped.
- `mask_from_boxes`: the paper's zero-shot instance segmentation protocol: every box of an existing
  `Detections` field is a prompt; the best of the three masks by predicted IoU is kept, with the box's label.
- `evaluate_masks`: FiftyOne's COCO-style `evaluate_detections(..., use_masks=True)` plus a per-sample
  mean best-match mask IoU field, so the App's evaluation panel lists the run.

The `iter_*` variants yield `(done, total)` after each sample, for callers that report progress by
yielding (the plugin's immediate runs). FiftyOne is imported inside the functions: the core does not need it.

Conversions between full-image masks and FiftyOne's (relative box, cropped mask) form are pure functions
below, each with its own tests.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
MODES = ("hierarchical", "dense")
# Box prompts decoded at once by mask_from_boxes (three full-resolution masks each).
DEFAULT_BOXES_PER_BATCH = 16
# The one label class-agnostic masks are compared under (auto_mask's masks carry none).
AGNOSTIC_LABEL = "object"
# Samples whose masks evaluate_masks holds in memory at once.
EVAL_CHUNK = 64


# --------------------------------------------------------------------------------------- pure conversions
def mask_to_box_and_crop(mask: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Full-image H×W mask → (relative [x, y, w, h] box, mask cropped to it), FiftyOne's `Detection` form.

    The box is the tight pixel extent of the mask (inclusive pixels, so w = x_max - x_min + 1), divided by
    the image size. An empty mask raises ValueError (it has no box).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: an empty mask has no bounding box")
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    h, w = mask.shape
    box = [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]
    return box, np.ascontiguousarray(mask[y0:y1, x0:x1])


def relative_box_to_pixels(box: Sequence[float], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Relative [x, y, w, h] → integer pixel XYXY (exclusive end), rounded as FiftyOne does, clipped to the image.

    image_size is (H, W).
    """
    if len(box) != 4:
        raise ValueError(f"box must be [x, y, w, h], got {box!r}")
    h, w = image_size
    x, y, bw, bh = (float(v) for v in box)
    x0 = min(max(round(x * w), 0), w)
    y0 = min(max(round(y * h), 0), h)
    x1 = min(max(round((x + bw) * w), x0), w)
    y1 = min(max(round((y + bh) * h), y0), h)
    return x0, y0, x1, y1


def relative_box_to_xyxy(box: Sequence[float], image_size: tuple[int, int]) -> np.ndarray:
    """Relative [x, y, w, h] → float XYXY in original pixels (a box prompt for the predictor)."""
    if len(box) != 4:
        raise ValueError(f"box must be [x, y, w, h], got {box!r}")
    h, w = image_size
    x, y, bw, bh = (float(v) for v in box)
    return np.array([x * w, y * h, (x + bw) * w, (y + bh) * h], dtype=np.float64)


def box_and_crop_to_mask(box: Sequence[float], crop: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Inverse of `mask_to_box_and_crop`: paste a cropped instance mask into an H×W bool mask.

    When the crop's shape differs from the box's pixel extent (masks made elsewhere), it is resized with
    nearest-neighbour sampling, as FiftyOne does.
    """
    crop = np.asarray(crop)
    if crop.ndim == 3:
        crop = crop[..., 0]
    if crop.ndim != 2:
        raise ValueError(f"instance mask must be 2-D, got shape {crop.shape}")
    full = np.zeros(image_size, dtype=bool)
    x0, y0, x1, y1 = relative_box_to_pixels(box, image_size)
    bh, bw = y1 - y0, x1 - x0
    if bh == 0 or bw == 0 or crop.size == 0:
        return full
    if crop.shape != (bh, bw):
        rows = np.minimum((np.arange(bh) * crop.shape[0] / bh).astype(int), crop.shape[0] - 1)
        cols = np.minimum((np.arange(bw) * crop.shape[1] / bw).astype(int), crop.shape[1] - 1)
        crop = crop[rows][:, cols]
    full[y0:y1, x0:x1] = crop.astype(bool)
    return full


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE {"size": [H, W], "counts": str | bytes | list} → H×W bool mask."""
    from pycocotools import mask as mask_utils

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"expected a COCO RLE dict with 'size' and 'counts', got {type(rle).__name__}")
    counts = rle["counts"]
    h, w = (int(v) for v in rle["size"])
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """H×W bool mask → compressed COCO RLE with `counts` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mean_best_match_iou(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> float | None:
    """Mean over ground-truth instances of the best mask IoU any prediction reaches (0 where none overlaps).

    None when there is no ground truth (the mean is undefined). Masks are H×W bool, all of one size.
    """
    if len(gt_masks) == 0:
        return None
    if len(pred_masks) == 0:
        return 0.0
    from pycocotools import mask as mask_utils

    def encode(masks):
        return mask_utils.encode(np.asfortranarray(np.stack([np.asarray(m, dtype=np.uint8) for m in masks], -1)))

    ious = np.asarray(mask_utils.iou(encode(pred_masks), encode(gt_masks), [0] * len(gt_masks)))
    ious = ious.reshape(len(pred_masks), len(gt_masks))
    return float(ious.max(axis=0).mean())


def best_of_three(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, H, W) masks and (B, 3) predicted IoUs → the mask with the highest predicted IoU per prompt.

    Returns masks (B, H, W) and their scores (B,).
    """
    masks, scores = np.asarray(masks), np.asarray(scores)
    if masks.ndim != 4 or scores.ndim != 2 or masks.shape[:2] != scores.shape:
        raise ValueError(f"expected masks (B, K, H, W) and scores (B, K), got {masks.shape} and {scores.shape}")
    best = np.argmax(scores, axis=1)
    rows = np.arange(len(best))
    return masks[rows, best], scores[rows, best]


def masks_for_boxes(predictor, emb, boxes_xyxy: np.ndarray, boxes_per_batch: int = 16
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Box prompts (N, 4) XYXY original pixels → best-of-three masks (N, H, W) bool and predicted IoUs (N,).

    Only the chosen mask of each prompt is upscaled to the image (the official postprocessing), a third of
    the work of upscaling all three.
    """
    import torch

    from .predictor import MASK_THRESHOLD
    from .transforms import upscale_logits

    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    h, w = emb.original_size
    out_masks = np.zeros((len(boxes_xyxy), h, w), dtype=bool)
    out_scores = np.zeros(len(boxes_xyxy), dtype=np.float32)
    for start in range(0, len(boxes_xyxy), boxes_per_batch):
        chunk = boxes_xyxy[start:start + boxes_per_batch]
        _, scores, low_res = predictor.predict_batch(emb, boxes=chunk, return_masks=False)
        best = np.argmax(scores, axis=1)
        rows = np.arange(len(chunk))
        logits = torch.from_numpy(np.ascontiguousarray(low_res[rows, best][:, None]))
        with torch.inference_mode():
            up = upscale_logits(logits, predictor.image_size, emb.input_size, emb.original_size)
        out_masks[start:start + len(chunk)] = (up[:, 0] > MASK_THRESHOLD).numpy()
        out_scores[start:start + len(chunk)] = scores[rows, best]
    return out_masks, out_scores


# ------------------------------------------------------------------------------------- FiftyOne labels
def everything_record_to_detection(record: dict, image_size: tuple[int, int], mask_path: Path | None = None):
    """One `segment_everything` record → `fo.Detection` (None for an empty mask).

    `confidence` is the predicted IoU; `stability_score` and `area` are attributes. With `mask_path` the
    cropped mask is written there as a PNG and referenced instead of stored in the document.
    """
    import fiftyone as fo

    mask = rle_to_mask(record["segmentation"])
    if mask.shape != tuple(image_size):
        raise ValueError(f"record mask is {mask.shape}, expected the image size {tuple(image_size)}")
    if not mask.any():
        return None
    box, crop = mask_to_box_and_crop(mask)
    attrs = {"confidence": float(record["predicted_iou"]), "stability_score": float(record["stability_score"]),
                 "area": int(record.get("area", int(mask.sum())))}
    if mask_path is None:
        return fo.Detection(bounding_box=box, mask=crop, **attrs)
    _write_mask_png(crop, mask_path)
    return fo.Detection(bounding_box=box, mask_path=str(mask_path), **attrs)


def detection_to_mask(detection, image_size: tuple[int, int]) -> np.ndarray:
    """`fo.Detection` with `mask` or `mask_path` → H×W bool mask in the image frame."""
    crop = detection.get_mask()
    if crop is None:
        raise ValueError(f"detection {detection.id} has neither `mask` nor `mask_path`; instance masks are needed")
    return box_and_crop_to_mask(detection.bounding_box, crop, image_size)


def _write_mask_png(crop: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop.astype(np.uint8) * 255).save(path)


# ---------------------------------------------------------------------------------------- helpers
def _check_collection(view) -> None:
    if not (hasattr(view, "values") and hasattr(view, "set_values") and hasattr(view, "select")):
        raise TypeError(f"expected a FiftyOne Dataset or DatasetView, got {type(view).__name__}")


def _check_field_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or name.startswith("_") or "." in name:
        raise ValueError(f"{what} must be a top-level field name (no dots, not starting with '_'), got {name!r}")


def _make_predictor(checkpoint, predictor):
    if predictor is not None:
        return predictor
    from .allocator import tune_in_process
    from .checkpoint import load_model
    from .predictor import Predictor

    tune_in_process()  # FiftyOne's processes start without our malloc variables (see allocator.py)
    return Predictor(load_model(checkpoint))


def _drain(steps: Iterator[tuple[int, int]], progress: ProgressFn | None) -> dict:
    """Run an iter_* generator to its end, forwarding progress; return the summary it returns."""
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)


def _image_size(sample_metadata, filepath: str) -> tuple[int, int]:
    if sample_metadata is not None and sample_metadata.height and sample_metadata.width:
        return int(sample_metadata.height), int(sample_metadata.width)
    from PIL import Image

    with Image.open(filepath) as img:
        w, h = img.size
    return h, w


# ------------------------------------------------------------------------------------------ auto_mask
def iter_auto_mask(view, label_field: str, *, checkpoint=None, mode: str = "hierarchical",
                   output_dir=None, overwrite: bool = False, predictor=None,
                   **everything_params) -> Iterator[tuple[int, int]]:
    """Generator form of `auto_mask`: yields (samples_done, samples_to_do); returns the summary dict."""
    from .errors import ImageError
    from .everything import EverythingParams, segment_everything
    from .image_io import load_image

    _check_collection(view)
    _check_field_name(label_field, "label_field")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    everything_params.pop("progress", None)
    EverythingParams(mode=mode, **everything_params)  # bad thresholds fail here, before any work
    todo = view if overwrite else view.exists(label_field, False)
    ids, paths = todo.values(["id", "filepath"])
    total = len(ids)
    skipped = len(view) - total if not overwrite else 0
    logger.info("auto_mask → %s: %d samples to do, %d already done", label_field, total, skipped)
    yield 0, total
    if total == 0:
        return {"label_field": label_field, "samples": 0, "skipped": skipped, "masks": 0, "failed": []}
    pred = _make_predictor(checkpoint, predictor)
    out_root = None if output_dir is None else Path(output_dir).expanduser() / label_field
    n_masks = 0
    failed = []
    for i, (sample_id, filepath) in enumerate(zip(ids, paths)):
        try:
            image = load_image(filepath, getattr(pred, "max_image_pixels", 100_000_000))
        except ImageError as e:  # left unset: reported, and retried by the next run
            logger.warning("auto_mask: sample %s (%s) skipped: %s", sample_id, filepath, e)
            failed.append(sample_id)
            yield i + 1, total
            continue
        records = segment_everything(pred, image, mode=mode, **everything_params)
        size = image.shape[:2]
        del image
        sample_dir = None
        if out_root is not None:
            sample_dir = out_root / sample_id
            if sample_dir.is_dir():
                for old in sample_dir.glob("*.png"):
                    old.unlink()
        dets = []
        for k, record in enumerate(records):
            path = None if sample_dir is None else sample_dir / f"{k:04d}.png"
            det = everything_record_to_detection(record, size, path)
            if det is not None:
                dets.append(det)
        _write_labels(view, sample_id, label_field, dets)
        n_masks += len(dets)
        yield i + 1, total
    return {"label_field": label_field, "samples": total - len(failed), "skipped": skipped, "masks": n_masks,
            "failed": failed}


def auto_mask(view, label_field: str, *, checkpoint=None, mode: str = "hierarchical", output_dir=None,
              overwrite: bool = False, predictor=None, progress: ProgressFn | None = None,
              **everything_params) -> dict:
    """Segment everything in every sample of `view` into the `Detections` field `label_field`.

    checkpoint: fp32 state dict or quantized artifact dir (None: TINYSAM_CHECKPOINT); predictor: an existing
    `Predictor` to use instead of loading one. mode: "hierarchical" or "dense". output_dir: write masks as
    PNGs under output_dir/label_field/<sample id>/ (`mask_path`) instead of into the documents. overwrite:
    redo samples whose field is already set (otherwise they are skipped, so a stopped run resumes).
    everything_params: `segment_everything`'s thresholds (points_per_side, pred_iou_thresh,
    stability_score_thresh, high_score_thresh, box_nms_thresh, min_mask_region_area, points_per_batch).
    progress(done, total) is called after each sample. Images that cannot be read are logged and left
    unset (retried by the next run). Returns {label_field, samples, skipped, masks, failed (sample ids)}.
    """
    return _drain(iter_auto_mask(view, label_field, checkpoint=checkpoint, mode=mode, output_dir=output_dir,
                                 overwrite=overwrite, predictor=predictor, **everything_params), progress)


def _write_labels(view, sample_id: str, label_field: str, dets: list) -> None:
    import fiftyone as fo

    view.select(sample_id).set_values(label_field, [fo.Detections(detections=dets)])


# ------------------------------------------------------------------------------------- mask_from_boxes
def iter_mask_from_boxes(view, box_field: str, label_field: str, *, checkpoint=None, predictor=None,
                         boxes_per_batch: int = DEFAULT_BOXES_PER_BATCH) -> Iterator[tuple[int, int]]:
    """Generator form of `mask_from_boxes`: yields (samples_done, samples); returns the summary dict."""
    import fiftyone as fo

    from .image_io import load_image

    _check_collection(view)
    _check_field_name(box_field, "box_field")
    _check_field_name(label_field, "label_field")
    if box_field == label_field:
        raise ValueError(f"label_field must differ from box_field, both are {box_field!r}")
    if not isinstance(boxes_per_batch, int) or boxes_per_batch < 1:
        raise ValueError(f"boxes_per_batch must be an integer >= 1, got {boxes_per_batch!r}")
    schema = view.get_field_schema()
    if box_field not in schema:
        raise ValueError(f"box_field {box_field!r} is not a field of the dataset; fields: {sorted(schema)}")
    ids, paths, box_labels = view.values(["id", "filepath", box_field])
    total = len(ids)
    yield 0, total
    pred = _make_predictor(checkpoint, predictor) if total else None
    n_masks = 0
    for i, (sample_id, filepath, boxes) in enumerate(zip(ids, paths, box_labels)):
        prompts = [] if boxes is None else list(getattr(boxes, "detections", None) or [])
        dets = []
        if prompts:
            image = load_image(filepath, getattr(pred, "max_image_pixels", 100_000_000))
            size = image.shape[:2]
            emb = pred.embed(image)
            del image
            xyxy = np.stack([relative_box_to_xyxy(d.bounding_box, size) for d in prompts])
            masks, scores = masks_for_boxes(pred, emb, xyxy, boxes_per_batch)
            for prompt, mask, score in zip(prompts, masks, scores):
                dets.append(_box_prompt_detection(fo, prompt, mask, float(score), size))
            del emb, masks
        _write_labels(view, sample_id, label_field, dets)
        n_masks += len(dets)
        yield i + 1, total
    return {"label_field": label_field, "samples": total, "masks": n_masks}


def _box_prompt_detection(fo, prompt, mask: np.ndarray, score: float, size: tuple[int, int]):
    """The mask predicted for one box prompt, with the prompt's label and confidence (predicted IoU if none)."""
    if mask.any():
        box, crop = mask_to_box_and_crop(mask)
    else:
        box = list(prompt.bounding_box)
        x0, y0, x1, y1 = relative_box_to_pixels(box, size)
        crop = np.zeros((max(y1 - y0, 1), max(x1 - x0, 1)), dtype=bool)
    confidence = prompt.confidence if prompt.confidence is not None else score
    return fo.Detection(label=prompt.label, bounding_box=box, mask=crop, confidence=confidence,
                        predicted_iou=score, prompt_id=prompt.id)


def mask_from_boxes(view, box_field: str, label_field: str, *, checkpoint=None, predictor=None,
                    boxes_per_batch: int = DEFAULT_BOXES_PER_BATCH, progress: ProgressFn | None = None) -> dict:
    """Box prompts from the `Detections` field `box_field` → instance masks in `label_field`.

    For each box the best of TinySAM's three masks by predicted IoU is kept (the paper's zero-shot
    instance segmentation protocol). Each new detection carries the box's label, the box's confidence
    (or the predicted IoU when the box has none), `predicted_iou`, and `prompt_id` (the box's id).
    Returns {label_field, samples, masks}.
    """
    return _drain(iter_mask_from_boxes(view, box_field, label_field, checkpoint=checkpoint, predictor=predictor,
                                       boxes_per_batch=boxes_per_batch), progress)


# -------------------------------------------------------------------------------------- evaluate_masks
def mean_best_iou_field(eval_key: str) -> str:
    """Name of the per-sample field evaluate_masks writes next to FiftyOne's `<eval_key>_tp/_fp/_fn`."""
    return f"{eval_key}_mean_best_iou"


def evaluate_masks(view, pred_field: str, gt_field: str, eval_key: str, *, compute_mAP: bool = False,
                   progress: ProgressFn | None = None) -> dict:
    """Compare the instance masks of `pred_field` with those of `gt_field`.

    Runs FiftyOne's COCO-style `evaluate_detections(..., use_masks=True)` under `eval_key` (classwise only
    when the predictions carry labels; mAP when asked), then writes the per-sample mean best-match mask
    IoU of the ground truth to `<eval_key>_mean_best_iou`. Returns a summary: tp, fp, fn, precision,
    recall, mAP (or None), mean_best_iou (mean over samples that have ground truth).
    """
    _check_collection(view)
    for name, what in ((pred_field, "pred_field"), (gt_field, "gt_field")):
        _check_field_name(name, what)
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        raise ValueError(f"eval_key must be a Python identifier, got {eval_key!r}")
    schema = view.get_field_schema()
    for name in (pred_field, gt_field):
        if name not in schema:
            raise ValueError(f"field {name!r} is not a field of the dataset; fields: {sorted(schema)}")
    _require_masks(view, gt_field)
    _require_masks(view, pred_field)
    labels = [v for v in view.distinct(f"{pred_field}.detections.label") if v is not None]
    classwise = bool(labels)
    logger.info("evaluate_masks %s vs %s as %r (classwise=%s, mAP=%s)", pred_field, gt_field, eval_key,
                classwise, compute_mAP)
    if eval_key in view.list_evaluations():
        view.delete_evaluation(eval_key)
    eval_view = view
    if not classwise:
        # FiftyOne counts a match between different labels as fp + fn, and a None label as "unmatched":
        # class-agnostic predictions are compared on a view that gives both sides one label. The stage
        # changes nothing stored; the evaluation fields are written to the real labels.
        eval_view = view.set_field(f"{gt_field}.detections.label", AGNOSTIC_LABEL).set_field(
            f"{pred_field}.detections.label", AGNOSTIC_LABEL)
    results = eval_view.evaluate_detections(pred_field, gt_field=gt_field, eval_key=eval_key, use_masks=True,
                                            classwise=classwise, compute_mAP=compute_mAP, progress=False)
    view.compute_metadata(progress=False)
    ids = view.values("id")
    values = {}
    for start in range(0, len(ids), EVAL_CHUNK):
        chunk = view.select(ids[start:start + EVAL_CHUNK], ordered=True)
        for sample_id, meta, path, p, g in zip(*chunk.values(["id", "metadata", "filepath", pred_field, gt_field])):
            size = _image_size(meta, path)
            gt_masks = [detection_to_mask(d, size) for d in (g.detections if g is not None else [])]
            pred_masks = [detection_to_mask(d, size) for d in (p.detections if p is not None else [])]
            values[sample_id] = mean_best_match_iou(gt_masks, pred_masks)
        if progress is not None:
            progress(len(values), len(ids))
    field = mean_best_iou_field(eval_key)
    view.set_values(field, values, key_field="id")
    tp, fp, fn = (int(sum(v or 0 for v in view.values(f"{eval_key}_{k}"))) for k in ("tp", "fp", "fn"))
    per_sample = [v for v in values.values() if v is not None]
    mAP = float(results.mAP()) if compute_mAP else None
    return {
        "eval_key": eval_key, "classwise": classwise,
        "tp": tp, "fp": fp, "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        # FiftyOne reports -1 when there is nothing to average over
        "mAP": mAP if mAP is not None and math.isfinite(mAP) and mAP >= 0 else None,
        "mean_best_iou": float(np.mean(per_sample)) if per_sample else None,
        "mean_best_iou_field": field,
    }


def _require_masks(view, field: str) -> None:
    from fiftyone import ViewField as F

    with_mask = (F("mask") != None) | (F("mask_path") != None)
    missing = view.count(f"{field}.detections") - view.filter_labels(
        field, with_mask, only_matches=False).count(f"{field}.detections")
    if missing:
        raise ValueError(f"{field}: {missing} detections have no instance mask (neither `mask` nor `mask_path`); "
                         f"expected every detection to carry one")


# ------------------------------------------------------------------------------------------- preview
def render_preview(image: np.ndarray, pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray] = (),
                   title_pred: str = "TinySAM", title_gt: str = "ground truth"):
    """Side-by-side PNG-ready picture: the image with its predicted masks | with its ground-truth masks.

    image H×W×3 uint8; masks H×W bool. Returns a PIL image (2W+gap wide, with a title strip).
    """
    from PIL import Image, ImageDraw

    from .visualize import overlay_masks

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    left = overlay_masks(image, list(pred_masks)) if len(pred_masks) else Image.fromarray(image)
    right = overlay_masks(image, list(gt_masks), colors=None) if len(gt_masks) else Image.fromarray(image)
    gap, strip = 8, 22
    canvas = Image.new("RGB", (2 * w + gap, h + strip), (32, 32, 32))
    canvas.paste(left, (0, strip))
    canvas.paste(right, (w + gap, strip))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"{title_pred}: {len(pred_masks)} masks", fill=(255, 255, 255))
    draw.text((w + gap + 4, 4), f"{title_gt}: {len(gt_masks)} masks", fill=(255, 255, 255))
    return canvas


def preview_sample(sample, pred_field: str, gt_field: str | None = None):
    """A FiftyOne sample → `render_preview` of its `pred_field` masks and (optionally) `gt_field` masks."""
    from .image_io import load_image

    image = load_image(sample.filepath)
    size = image.shape[:2]

    def masks_of(field):
        if field is None:
            return []
        labels = sample[field]
        return [] if labels is None else [detection_to_mask(d, size) for d in labels.detections]

    return render_preview(image, masks_of(pred_field), masks_of(gt_field), title_pred=pred_field,
                          title_gt=gt_field or "ground truth")


def cmd_fo_preview(args: argparse.Namespace) -> int:
    import fiftyone as fo

    dataset = fo.load_dataset(args.dataset)
    if args.sample_id:
        sample = dataset[args.sample_id]
    else:
        if not 0 <= args.index < len(dataset):
            raise IndexError(f"--index must be in [0, {len(dataset)}), got {args.index}")
        sample = dataset.skip(args.index).first()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_sample(sample, args.pred, args.gt).save(out)
    print(out)
    return 0


def register_cli(subparsers) -> None:
    """`tinysam fo-preview`: PNG of one sample with its TinySAM masks beside its ground truth."""
    p = subparsers.add_parser("fo-preview", help="PNG of a FiftyOne sample: predicted masks | ground truth")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--pred", required=True, help="Detections field with the predicted instance masks")
    p.add_argument("--gt", help="Detections field with ground-truth instance masks")
    p.add_argument("--sample-id", help="sample id (default: the sample at --index)")
    p.add_argument("--index", type=int, default=0, help="position of the sample in the dataset (default 0)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.set_defaults(func=cmd_fo_preview)


__all__ = [
    "auto_mask",
    "best_of_three",
    "box_and_crop_to_mask",
    "detection_to_mask",
    "evaluate_masks",
    "everything_record_to_detection",
    "iter_auto_mask",
    "iter_mask_from_boxes",
    "mask_from_boxes",
    "mask_to_box_and_crop",
    "mask_to_rle",
    "masks_for_boxes",
    "mean_best_iou_field",
    "mean_best_match_iou",
    "preview_sample",
    "register_cli",
    "relative_box_to_pixels",
    "relative_box_to_xyxy",
    "render_preview",
    "rle_to_mask",
]
