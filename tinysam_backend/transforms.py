"""Geometry between the original image frame and the model's 1024×1024 input frame.

Resizing matches the official implementation: the longest side becomes `target` with
`int(side * scale + 0.5)`, using Pillow's bilinear resize of the uint8 image.
"""

from __future__ import annotations

import functools

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


def upscale_logits(low_res: torch.Tensor, image_size: int, input_size: tuple[int, int],
                   original_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, 256, 256) logits → (B, C, H, W) logits in original pixels, as the official postprocessing.

    The official map is two bilinear interpolations (align_corners=False): to the `image_size`² input frame, crop
    to `input_size`, then to `original_size`. Per axis both are linear, so their composition is one filter with
    at most three taps per output pixel (`_composed_axis`). When the image is no larger than the input frame (the
    second interpolation shrinks), that filter is applied directly: no `image_size`² intermediate, values equal
    the two steps' up to float32 rounding. Otherwise the two steps run as the official code, on the low-res rows
    and columns that the crop keeps (bit-identical: the first step's scale stays exactly 1/4)."""
    n_h, n_w = low_res.shape[-2:]
    shrinks = original_size[0] <= input_size[0] and original_size[1] <= input_size[1]
    if shrinks and 3 <= min(n_h, n_w) and max(n_h, n_w) <= image_size:
        taps_y = _composed_axis(n_h, image_size, input_size[0], original_size[0])
        taps_x = _composed_axis(n_w, image_size, input_size[1], original_size[1])
        along_x = _three_tap_rows(low_res.transpose(-1, -2).contiguous(), *taps_x).transpose(-1, -2).contiguous()
        return _three_tap_rows(along_x, *taps_y)
    factor_h, factor_w = image_size // n_h, image_size // n_w
    if factor_h * n_h == image_size and factor_w * n_w == image_size:
        # Low-res rows/columns the first step reads for the kept input_size part (+1 for its right neighbour).
        keep_h = min(n_h, -(-input_size[0] // factor_h) + 1)
        keep_w = min(n_w, -(-input_size[1] // factor_w) + 1)
        low_res = low_res[..., :keep_h, :keep_w]
        size = (factor_h * keep_h, factor_w * keep_w)
    else:
        size = (image_size, image_size)
    x = F.interpolate(low_res, size, mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear (align_corners=False) along one axis, n_in → n_out: first and second source index and
    their weights per output index. Scale and source position in float32, the position rounded once
    (scale·(i + ½) − ½ as one fused multiply-add), as torch's CPU kernel computes them."""
    scale = np.float32(n_in) / np.float32(n_out)
    centre = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = np.maximum((float(scale) * centre.astype(np.float64) - 0.5).astype(np.float32), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float64), w1.astype(np.float64)


@functools.lru_cache(maxsize=256)
def _composed_axis(n_low: int, image_size: int, crop: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, low-res n_low → image_size, keep the first `crop`, → n_out, as one filter: the first of
    three consecutive low-res indices per output (n_out,) int64 and their weights (3, n_out) float32. Three taps
    suffice while image_size ≥ n_low: two neighbours of the crop feed each output, and their low-res neighbours
    are at most one apart."""
    a0, a1, u0, u1 = _linear_taps(n_low, image_size)
    j0, j1, v0, v1 = _linear_taps(crop, n_out)
    start = np.minimum(a0[j0], n_low - 3)
    weights = np.zeros((n_out, 3))
    rows = np.arange(n_out)
    for index, weight in ((a0[j0], v0 * u0[j0]), (a1[j0], v0 * u1[j0]), (a0[j1], v1 * u0[j1]), (a1[j1], v1 * u1[j1])):
        np.add.at(weights, (rows, index - start), weight)
    return torch.from_numpy(start), torch.from_numpy(weights.T.astype(np.float32))


def _three_tap_rows(x: torch.Tensor, start: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., n, m) → (..., k, m): row i is Σ_t weights[t, i] · x[..., start[i] + t, :]."""
    start, weights = start.to(x.device), weights.to(x.device, x.dtype)
    out = x.index_select(-2, start).mul_(weights[0, :, None])
    out.addcmul_(x.index_select(-2, start + 1), weights[1, :, None])
    return out.addcmul_(x.index_select(-2, start + 2), weights[2, :, None])
