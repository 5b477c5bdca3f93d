"""FiftyOne front end: TinySAM over a dataset or view, from Python, the plugin's operators or the model zoo.

Modules (each one job; FiftyOne is imported only when a function runs):

- `conversions`: full-image masks / prompts ⇄ FiftyOne's relative boxes, cropped masks and keypoints (pure);
- `auto_masks`: `auto_mask`, segment-everything on every sample → a `Detections` field of instance masks;
- `masks_from_prompts`: `mask_from_boxes`, box (`Detections`) or point (`Keypoints`) prompts → instance masks,
  the paper's zero-shot instance segmentation protocol;
- `evaluate`: `evaluate_masks`, FiftyOne's COCO-style mask evaluation + per-sample mean best-match IoU, as one
  FiftyOne evaluation run;
- `zoo`: TinySAM as a FiftyOne zoo model (`dataset.apply_model`), hooks of the `fiftyone_zoo/` source;
- `preview`, `cli`: a side-by-side PNG of a sample, `tinysam fo-preview`;
- `common`: argument checks made before any work, the predictor, progress, shards.

`auto_mask` and `mask_from_boxes` skip samples already done unless `overwrite` (a stopped run resumes), skip and
report images that cannot be read, and take FiftyOne's `progress` convention. The `iter_*` variants yield
(done, total) after each sample, for callers that report progress by yielding (the plugin's immediate runs).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "auto_mask": "auto_masks",
    "iter_auto_mask": "auto_masks",
    "everything_defaults": "auto_masks",
    "mask_from_boxes": "masks_from_prompts",
    "iter_mask_from_boxes": "masks_from_prompts",
    "evaluate_masks": "evaluate",
    "mean_best_iou_field": "evaluate",
    "AGNOSTIC_LABEL": "evaluate",
    "shard_view": "common",
    "mask_to_box_and_crop": "conversions",
    "box_and_crop_to_mask": "conversions",
    "relative_box_to_pixels": "conversions",
    "relative_box_to_xyxy": "conversions",
    "relative_points_to_xy": "conversions",
    "everything_record_to_detection": "conversions",
    "detection_to_mask": "conversions",
    "render_preview": "preview",
    "preview_sample": "preview",
    "register_cli": "cli",
}

__all__ = [
    "AGNOSTIC_LABEL",
    "auto_mask",
    "box_and_crop_to_mask",
    "detection_to_mask",
    "evaluate_masks",
    "everything_defaults",
    "everything_record_to_detection",
    "iter_auto_mask",
    "iter_mask_from_boxes",
    "mask_from_boxes",
    "mask_to_box_and_crop",
    "mean_best_iou_field",
    "preview_sample",
    "register_cli",
    "relative_box_to_pixels",
    "relative_box_to_xyxy",
    "relative_points_to_xy",
    "render_preview",
    "shard_view",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinysam_backend.fiftyone_adapter' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
