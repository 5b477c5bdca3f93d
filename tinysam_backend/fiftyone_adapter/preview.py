"""Side-by-side PNG of a sample: its TinySAM masks | its ground-truth masks (for reports and `tinysam fo-preview`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from .conversions import detection_to_mask


def render_preview(image: np.ndarray, pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray] = (),
                   title_pred: str = "TinySAM", title_gt: str = "ground truth"):
    """Side-by-side PNG-ready picture: the image with its predicted masks | with its ground-truth masks.

    image H×W×3 uint8; masks H×W bool. Returns a PIL image (2W+gap wide, with a title strip).
    """
    from PIL import Image, ImageDraw

    from ..visualize import overlay_masks

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


def preview_sample(sample, pred_field: str, gt_field: str | None = None,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """A FiftyOne sample → `render_preview` of its `pred_field` masks and (optionally) `gt_field` masks."""
    from ..image_io import load_image

    image = load_image(sample.filepath, max_image_pixels)
    size = image.shape[:2]

    def masks_of(field):
        if field is None:
            return []
        labels = sample[field]
        return [] if labels is None else [detection_to_mask(d, size) for d in labels.detections]

    return render_preview(image, masks_of(pred_field), masks_of(gt_field), title_pred=pred_field,
                          title_gt=gt_field or "ground truth")
