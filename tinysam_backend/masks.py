"""Mask maths shared by the front ends and the COCO evaluation: prompts → best masks, mask IoU.

Front-end specific forms (FiftyOne's relative box + cropped mask, Label Studio's brush RLE) live with their
front end. COCO RLE is `encode_rle` / `decode_rle`, re-exported here for the front ends from
`everything.postprocess`, the one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .everything.postprocess import decode_rle, encode_rle

# Prompts decoded at once when turning many boxes (or point sets) of one image into masks.
DEFAULT_PROMPTS_PER_BATCH = 16


def best_masks_for_prompts(predictor, emb, *, boxes=None, point_coords=None, point_labels=None,
                           prompts_per_batch: int = DEFAULT_PROMPTS_PER_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Many prompts on one image → the best of the three masks of each (by predicted IoU), in original pixels.

    boxes (B, 4) XYXY original pixels; point_coords (B, N, 2) XY original pixels with point_labels (B, N)
    (1 foreground, 0 background); either or both. Only the chosen mask of each prompt is upscaled (the
    predictor's `best_only`). Returns masks (B, H, W) bool and their predicted IoUs (B,) float32.
    """
    if not isinstance(prompts_per_batch, (int, np.integer)) or prompts_per_batch < 1:
        raise ValueError(f"prompts_per_batch must be an integer >= 1, got {prompts_per_batch!r}")
    if boxes is None and point_coords is None:
        raise ValueError("expected boxes (B, 4) or point_coords (B, N, 2), got neither")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if point_coords is not None:
        point_coords = np.asarray(point_coords, dtype=np.float64)
        point_labels = np.ones(point_coords.shape[:2]) if point_labels is None else np.asarray(point_labels)
        if point_coords.ndim != 3 or point_coords.shape[2] != 2 or point_labels.shape != point_coords.shape[:2]:
            raise ValueError(f"expected point_coords (B, N, 2) and point_labels (B, N), got {point_coords.shape} "
                             f"and {point_labels.shape}")
    n = len(boxes) if boxes is not None else len(point_coords)
    if boxes is not None and point_coords is not None and len(point_coords) != n:
        raise ValueError(f"boxes and point_coords must have one row per prompt, got {n} and {len(point_coords)}")
    h, w = emb.original_size
    out_masks = np.zeros((n, h, w), dtype=bool)
    out_scores = np.zeros(n, dtype=np.float32)
    for start in range(0, n, prompts_per_batch):
        stop = min(start + prompts_per_batch, n)
        masks, scores, _ = predictor.predict_batch(
            emb, boxes=None if boxes is None else boxes[start:stop],
            point_coords=None if point_coords is None else point_coords[start:stop],
            point_labels=None if point_coords is None else point_labels[start:stop], best_only=True)
        out_masks[start:stop] = masks[:, 0]
        out_scores[start:stop] = scores.max(axis=1)
    return out_masks, out_scores


def mask_iou_matrix(pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray]) -> np.ndarray:
    """(P,) and (G,) H×W bool masks of one size → (P, G) mask IoU, computed on COCO RLE (pycocotools)."""
    if len(pred_masks) == 0 or len(gt_masks) == 0:
        return np.zeros((len(pred_masks), len(gt_masks)))
    from pycocotools import mask as mask_utils

    sizes = {np.shape(m) for m in [*pred_masks, *gt_masks]}
    if len(sizes) != 1:
        raise ValueError(f"masks must all have one size, got sizes {sorted(sizes)}")

    def rles(masks):
        return [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in encode_rle(np.stack(masks))]

    ious = mask_utils.iou(rles(pred_masks), rles(gt_masks), [0] * len(gt_masks))
    return np.asarray(ious, dtype=np.float64).reshape(len(pred_masks), len(gt_masks))


def mean_best_match_iou(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> float | None:
    """Mean over ground-truth instances of the best mask IoU any prediction reaches (0 where none overlaps).

    None when there is no ground truth (the mean is undefined). Masks are H×W bool, all of one size.
    """
    if len(gt_masks) == 0:
        return None
    if len(pred_masks) == 0:
        return 0.0
    return float(mask_iou_matrix(pred_masks, gt_masks).max(axis=0).mean())


__all__ = ["DEFAULT_PROMPTS_PER_BATCH", "best_masks_for_prompts", "decode_rle", "encode_rle", "mask_iou_matrix",
           "mean_best_match_iou"]
