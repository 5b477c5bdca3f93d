"""Geometry between the original image frame and the model's 1024×1024 input frame.

Resizing matches the official implementation: the longest side becomes `target` with
`int(side * scale + 0.5)`, using Pillow's bilinear resize of the uint8 image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ImageError


def resized_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side equal to `target`.

    Raises ImageError when the short side would round to 0 pixels: an aspect ratio above 2·target : 1 (2048:1 for
    the 1024-pixel input), which the official implementation cannot resize either."""
    if height < 1 or width < 1:
        raise ImageError(f"image has an empty side: {width}x{height} pixels")
    scale = target * 1.0 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    if new_h < 1 or new_w < 1:
        raise ImageError(f"image is {width}x{height} pixels: at the model's {target}-pixel input its short side would "
                         f"be 0 pixels; aspect ratios above {2 * target}:1 are not supported (crop or pad the image)")
    return new_h, new_w


def resize_image(image: np.ndarray, target: int) -> np.ndarray:
    """H×W×3 uint8 → new_h×new_w×3 uint8 (Pillow bilinear)."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], target)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def coords_to_input(coords: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """(..., 2) XY in original pixels → XY in the input frame (float64 arithmetic, float32 result)."""
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (input_size[1] / original_size[1])
    coords[..., 1] = coords[..., 1] * (input_size[0] / original_size[0])
    return coords.astype(np.float32)


def boxes_to_input(boxes: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """(..., 4) XYXY original pixels → XYXY in the input frame."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return coords_to_input(boxes.reshape(-1, 2, 2), original_size, input_size).reshape(boxes.shape)


def low_res_extent(low_side: int, image_size: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the low-res logits that the input-frame crop `input_size` depends on, through the bilinear
    upscale by image_size / low_side: output pixel y reads low-res rows ⌊(y + ½)/f − ½⌋ and the one after, so the
    crop's last row needs ⌈h / f⌉ + 1 rows at most."""
    f = image_size // low_side
    return tuple(min(low_side, -(-size // f) + 1) for size in input_size)


def upscale_to_input_frame(low_res: torch.Tensor, image_size: int, input_size: tuple[int, int]) -> torch.Tensor:
    """(..., S, S) low-res logits → (..., h, w) logits of the input frame's image area: the official bilinear
    upscale to image_size² cropped to input_size, computed for the low-res rows and columns the crop reads only
    (`low_res_extent`; the same scale, so the same values as upscaling everything and cropping). The low-res
    logits may already be cut to that extent on one side."""
    side = max(low_res.shape[-2:])  # the full side: at most one of them is cut
    f = image_size // side
    if f * side != image_size:
        x = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
        return x[..., : input_size[0], : input_size[1]]
    rows, cols = low_res_extent(side, image_size, input_size)
    if rows < side and cols < side:
        # Both narrowed: ATen's kernel then gave last-bit differences for some small crops (e.g. 57 × 57). An
        # input frame always has one full side (the long side is image_size), so this only guards other callers.
        cols = side
    if low_res.shape[-2] < rows or low_res.shape[-1] < cols:
        raise ValueError(f"low-res logits {tuple(low_res.shape[-2:])} are cut inside what the crop "
                         f"{tuple(input_size)} reads ({rows} × {cols})")
    x = F.interpolate(low_res[..., :rows, :cols], (rows * f, cols * f), mode="bilinear", align_corners=False)
    return x[..., : input_size[0], : input_size[1]]


def upscale_logits(low_res: torch.Tensor, image_size: int, input_size: tuple[int, int],
                   original_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, 256, 256) logits → (B, C, H, W) logits in original pixels, as the official postprocessing."""
    x = upscale_to_input_frame(low_res, image_size, input_size)
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)
