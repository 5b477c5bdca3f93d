"""Mask post-processing of segment-everything: boxes, box NMS, small regions.

Pure numpy functions on masks in original image pixels. The arithmetic follows the official
implementation (SAM's automatic mask generator, which TinySAM reuses); the stability score and COCO RLE,
which other parts share, are in `tinysam_backend.masks`.

- boxes: XYXY with inclusive pixel indices of the first and last row/column of the mask, [0, 0, 0, 0] for
  an empty mask; the record's XYWH box is [x0, y0, x1 - x0, y1 - y0];
- NMS: greedy over descending score, box IoU = inter / (area_a + area_b - inter) with area = (x1 - x0) * (y1 - y0)
  (no +1), a box is suppressed when its IoU with a kept box is > the threshold (so 1.0 suppresses nothing; a pair
  of zero-area boxes has IoU NaN and never suppresses).
"""

from __future__ import annotations

import numpy as np


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool → (K, 4) int64 XYXY, inclusive pixel indices; empty masks give [0, 0, 0, 0]."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    rows = masks.any(axis=2)  # (K, H)
    cols = masks.any(axis=1)  # (K, W)
    return rows_cols_to_boxes(rows, cols)


def rows_cols_to_boxes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Boxes from per-mask row occupancy (K, H) and column occupancy (K, W) bool arrays."""
    h, w = rows.shape[1], cols.shape[1]
    top = rows.argmax(axis=1)
    bottom = h - 1 - rows[:, ::-1].argmax(axis=1)
    left = cols.argmax(axis=1)
    right = w - 1 - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([left, top, right, bottom], axis=1).astype(np.int64)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def box_xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) XYXY → (K, 4) XYWH with W = x1 - x0, H = y1 - y0."""
    boxes = np.asarray(boxes)
    out = boxes.copy()
    out[:, 2] = boxes[:, 2] - boxes[:, 0]
    out[:, 3] = boxes[:, 3] - boxes[:, 1]
    return out


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, chunk: int = 2048) -> np.ndarray:
    """Greedy non-maximum suppression. Returns the kept indices, highest score first.

    boxes (K, 4) XYXY, scores (K,). Ties in score keep the earlier index first. The pairwise IoU is
    computed in row chunks (memory O(chunk · K)), and the greedy pass only visits boxes not yet suppressed.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) XYXY, got shape {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be ({boxes.shape[0]},), got shape {scores.shape}")
    k = boxes.shape[0]
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(k, dtype=bool)
    keep = []
    for start in range(0, k, chunk):
        stop = min(k, start + chunk)
        # IoU of this chunk's boxes with every later box (earlier ones are already decided).
        lt = np.maximum(b[start:stop, None, :2], b[None, start:, :2])
        rb = np.minimum(b[start:stop, None, 2:], b[None, start:, 2:])
        wh = np.clip(rb - lt, 0.0, None)
        inter = wh[..., 0] * wh[..., 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            over = inter / (area[start:stop, None] + area[None, start:] - inter) > iou_threshold
        for i in range(start, stop):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed[start:] |= over[i - start]
    return order[np.asarray(keep, dtype=np.int64)]


def remove_small_regions(mask: np.ndarray, area_thresh: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (`mode="holes"`) or drop islands (`mode="islands"`) smaller than `area_thresh` pixels.

    8-connected components. When every island is small, the largest one is kept. Returns (mask, changed).
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    working = mask ^ holes  # holes: the background's components; islands: the mask's components
    regions, n = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if holes:
        # The result is the old mask plus the small background components.
        return mask | np.isin(regions, small), True
    big = np.setdiff1d(np.arange(1, n + 1), small)
    if big.size == 0:
        big = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, big), True
