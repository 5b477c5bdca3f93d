"""Mask maths shared by the predictor, everything-mode, the front ends and the COCO evaluation.

The facts every part uses are written here once: the logit threshold of a mask, the stability score, COCO RLE
(the records of segment-everything, the COCO evaluation, FiftyOne and Label Studio's pre-annotation all encode
and decode through `encode_rle` / `decode_rle`), and the best of TinySAM's three masks per prompt for many
prompts of one image. Front-end specific forms (FiftyOne's relative box + cropped mask, Label Studio's brush RLE)
live with their front end. Pure numpy; pycocotools is imported when a function needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

# A mask pixel is on where its logit is above this (SAM's `mask_threshold`).
MASK_THRESHOLD = 0.0
# Prompts decoded at once when turning many boxes (or point sets) of one image into masks.
DEFAULT_PROMPTS_PER_BATCH = 16


def stability_score(logits: np.ndarray, mask_threshold: float = MASK_THRESHOLD, offset: float = 1.0) -> np.ndarray:
    """(K, H, W) float logits → (K,) float32 stability scores: |logits > t + offset| / |logits > t - offset|, the
    IoU of the masks at threshold ± offset (NaN when nothing is above t - offset). Only counts are taken, so the
    masks may be given transposed, (K, W, H)."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (K, H, W), got shape {logits.shape}")
    high = np.count_nonzero(logits > mask_threshold + offset, axis=(1, 2)).astype(np.float32)
    low = np.count_nonzero(logits > mask_threshold - offset, axis=(1, 2)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return high / low


# ---------------------------------------------------------------------------------------------------- COCO RLE
def encode_rle(masks: np.ndarray) -> list[dict]:
    """(K, H, W) bool → COCO compressed RLE dicts {"size": [H, W], "counts": str} (pycocotools)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    # COCO RLE runs down the columns: the memory of a C-ordered (K, W, H) array.
    return encode_rle_transposed(np.ascontiguousarray(masks.transpose(0, 2, 1)))


def encode_rle_transposed(masks_t: np.ndarray) -> list[dict]:
    """Like `encode_rle` for masks given transposed, (K, W, H) C-ordered bool (no copy needed)."""
    from pycocotools import mask as mask_utils

    masks_t = np.ascontiguousarray(masks_t, dtype=bool)
    if masks_t.shape[0] == 0:
        return []
    # pycocotools wants (H, W, K) in Fortran order: that is the memory of a C-ordered (K, W, H) array.
    return [rle_to_json(r) for r in mask_utils.encode(masks_t.view(np.uint8).transpose(2, 1, 0))]


def rle_to_json(rle: dict) -> dict:
    """pycocotools RLE (counts as bytes) → JSON-ready dict (counts as str, size as [H, W] ints)."""
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts)}


def rle_to_pycocotools(rle: dict) -> dict:
    """COCO RLE dict with counts as str or bytes → the form pycocotools' functions take (counts as bytes)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE dict (counts str or bytes) → (H, W) bool."""
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode([rle_to_pycocotools(rle)])[:, :, 0].astype(bool)


# ------------------------------------------------------------------------------------ prompts → best masks
def best_masks_for_prompts(predictor, emb, *, boxes=None, point_coords=None, point_labels=None,
                           prompts_per_batch: int = DEFAULT_PROMPTS_PER_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Many prompts on one image → the best of the three masks of each (by predicted IoU), in original pixels.

    boxes (B, 4) XYXY original pixels; point_coords (B, N, 2) XY original pixels with point_labels (B, N)
    (1 foreground, 0 background); either or both. Decoded prompts_per_batch at a time by `Predictor.predict_best`
    (only the chosen mask of each prompt is upscaled). Returns masks (B, H, W) bool and their predicted IoUs (B,)
    float32.
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
        out_masks[start:stop], out_scores[start:stop], _ = predictor.predict_best(
            emb, boxes=None if boxes is None else boxes[start:stop],
            point_coords=None if point_coords is None else point_coords[start:stop],
            point_labels=None if point_coords is None else point_labels[start:stop])
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
        return [rle_to_pycocotools(r) for r in encode_rle(np.stack(masks))]

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


__all__ = ["DEFAULT_PROMPTS_PER_BATCH", "MASK_THRESHOLD", "best_masks_for_prompts", "decode_rle", "encode_rle",
           "encode_rle_transposed", "mask_iou_matrix", "mean_best_match_iou", "rle_to_json", "rle_to_pycocotools",
           "stability_score"]
