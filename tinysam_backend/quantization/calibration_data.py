"""The calibration set: which images the scales are fitted on, and the random prompts run on each.

The default images ship with scikit-image (no download) and leave out the two photos the parity fixtures use to
measure the result (astronaut, coffee), so the accuracy figures are not measured on calibration data.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

DEFAULT_CALIBRATION_IMAGES = ("chelsea", "rocket", "camera", "coins", "clock", "immunohistochemistry",
                              "hubble_deep_field", "retina")
"""scikit-image's bundled photos (no download), excluding the parity images astronaut/coffee used to measure."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def default_calibration_images() -> list[np.ndarray]:
    """scikit-image's bundled sample photos (`DEFAULT_CALIBRATION_IMAGES`), as H×W×3 uint8 RGB."""
    try:
        import skimage.data
    except ImportError as e:
        raise RuntimeError("the default calibration set needs scikit-image (`pip install scikit-image`); "
                           "or pass --calib with your own images") from e
    from ..image_io import array_to_rgb

    return [array_to_rgb(getattr(skimage.data, name)()) for name in DEFAULT_CALIBRATION_IMAGES]


def calibration_image_paths(sources: Iterable[str | Path], limit: int = 8) -> list[Path]:
    """Files and directories (their images, sorted) → at most `limit` image paths."""
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"calibration source {p} is neither a file nor a directory")
    if not paths:
        raise ValueError(f"no images (expected suffixes {IMAGE_SUFFIXES}) in {list(map(str, sources))}")
    return paths[:limit]


def calibration_prompts(input_size: tuple[int, int], count: int, rng: np.random.Generator
                        ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """Random single clicks and boxes inside the resized image (input frame) → (points, boxes).

    points: ((P, 1, 2) XY, (P, 1) labels, all foreground) with P = count - count // 2; boxes: (count // 2, 4)
    XYXY, or None when count < 2.
    """
    h, w = input_size
    n_points = max(1, count - count // 2)
    n_boxes = count // 2
    coords = np.stack([rng.uniform(0, w, n_points), rng.uniform(0, h, n_points)], axis=1)[:, None, :]
    points = (torch.from_numpy(coords.astype(np.float32)), torch.ones(n_points, 1, dtype=torch.int64))
    boxes = None
    if n_boxes:
        c = np.stack([rng.uniform(0, w, n_boxes), rng.uniform(0, h, n_boxes)], axis=1)
        half = np.stack([rng.uniform(0.05, 0.4) * w * np.ones(n_boxes), rng.uniform(0.05, 0.4) * h * np.ones(n_boxes)], 1)
        b = np.concatenate([np.clip(c - half, 0, [w, h]), np.clip(c + half, 0, [w, h])], axis=1)
        boxes = torch.from_numpy(b.astype(np.float32))
    return points, boxes
