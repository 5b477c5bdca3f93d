"""Pure conversions between full-image masks / prompts and FiftyOne's label forms.

FiftyOne stores an instance mask as a relative [x, y, w, h] box plus the mask cropped to that box
(`Detection.mask`, or a PNG at `Detection.mask_path`); keypoints as relative [x, y] points. Each function here
is small and has its own tests; only the two `*_detection` helpers import FiftyOne.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


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


def relative_points_to_xy(points: Sequence[Sequence[float]], image_size: tuple[int, int]) -> np.ndarray:
    """A `Keypoint`'s relative [[x, y], …] → (N, 2) XY original pixels; NaN points (not visible) are dropped."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    h, w = image_size
    return pts * np.array([w, h], dtype=np.float64)


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


def everything_record_to_detection(record: dict, image_size: tuple[int, int], mask_path: Path | None = None):
    """One `segment_everything` record → `fo.Detection` (None for an empty mask).

    `confidence` is the predicted IoU; `stability_score` and `area` are attributes. With `mask_path` the
    cropped mask is written there as a PNG and referenced instead of stored in the document.
    """
    import fiftyone as fo

    from ..masks import decode_rle

    mask = decode_rle(record["segmentation"])
    if mask.shape != tuple(image_size):
        raise ValueError(f"record mask is {mask.shape}, expected the image size {tuple(image_size)}")
    if not mask.any():
        return None
    box, crop = mask_to_box_and_crop(mask)
    attrs = {"confidence": float(record["predicted_iou"]), "stability_score": float(record["stability_score"]),
             "area": int(record.get("area", int(mask.sum())))}
    if mask_path is None:
        return fo.Detection(bounding_box=box, mask=crop, **attrs)
    write_mask_png(crop, mask_path)
    return fo.Detection(bounding_box=box, mask_path=str(mask_path), **attrs)


def prompt_mask_to_detection(prompt, mask: np.ndarray, score: float, image_size: tuple[int, int]):
    """The mask predicted for one prompt (a `Detection` box or a `Keypoint`) → `fo.Detection` with the prompt's
    label, the prompt's confidence (the predicted IoU when it has none), `predicted_iou` and `prompt_id`.

    An empty mask keeps the prompt's box (a box prompt) or a one-pixel box at the first point (keypoints).
    """
    import fiftyone as fo

    if mask.any():
        box, crop = mask_to_box_and_crop(mask)
    else:
        if getattr(prompt, "bounding_box", None) is not None:
            box = list(prompt.bounding_box)
        else:
            xy = relative_points_to_xy(prompt.points, image_size)
            x, y = (xy[0] if len(xy) else (0.0, 0.0))
            box = [x / image_size[1], y / image_size[0], 1 / image_size[1], 1 / image_size[0]]
        x0, y0, x1, y1 = relative_box_to_pixels(box, image_size)
        crop = np.zeros((max(y1 - y0, 1), max(x1 - x0, 1)), dtype=bool)
    confidence = getattr(prompt, "confidence", None)
    if confidence is None or isinstance(confidence, (list, tuple)):  # Keypoint confidences are per point
        confidence = score
    return fo.Detection(label=prompt.label, bounding_box=box, mask=crop, confidence=confidence,
                        predicted_iou=score, prompt_id=prompt.id)


def detection_to_mask(detection, image_size: tuple[int, int]) -> np.ndarray:
    """`fo.Detection` with `mask` or `mask_path` → H×W bool mask in the image frame."""
    crop = detection.get_mask()
    if crop is None:
        raise ValueError(f"detection {detection.id} has neither `mask` nor `mask_path`; instance masks are needed")
    return box_and_crop_to_mask(detection.bounding_box, crop, image_size)


def write_mask_png(crop: np.ndarray, path: Path) -> None:
    """A cropped bool mask → 8-bit PNG (0 / 255) at `path` (parents created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop.astype(np.uint8) * 255).save(path)
