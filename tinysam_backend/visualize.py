"""Overlay PNGs a person can look at: masks coloured over the image, prompts drawn on top."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int, seed: int = 0) -> np.ndarray:
    """n distinct bright RGB colours (uint8), reproducible."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    h6 = hues * 6.0
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    v, s = 1.0, 0.75
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.stack(c, -1) for c in ((v + 0 * f, t, p + 0 * f), (q, v + 0 * f, p + 0 * f),
                                                 (p + 0 * f, v + 0 * f, t), (p + 0 * f, q, v + 0 * f),
                                                 (t, p + 0 * f, v + 0 * f), (v + 0 * f, p + 0 * f, q))])
    rgb = table[i, np.arange(n)]
    return (rgb * 255).astype(np.uint8)


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray, alpha: float = 0.5,
                  colors: np.ndarray | None = None, points: np.ndarray | None = None,
                  point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                  outline: bool = True) -> Image.Image:
    """image H×W×3 uint8; masks (K, H, W) bool, drawn largest first so small ones stay visible.

    points (N, 2) XY with labels (1 green, 0 red); boxes (M, 4) XYXY drawn in yellow.
    """
    out = image.astype(np.float32).copy()
    masks = [np.asarray(m, dtype=bool) for m in masks]
    colors = palette(len(masks)) if colors is None else np.asarray(colors, dtype=np.uint8)
    order = sorted(range(len(masks)), key=lambda k: -int(masks[k].sum()))
    edges = np.zeros(image.shape[:2], dtype=bool)
    for k in order:
        m = masks[k]
        out[m] = (1 - alpha) * out[m] + alpha * colors[k].astype(np.float32)
        if outline:
            inner = m.copy()
            inner[1:, :] &= m[:-1, :]
            inner[:-1, :] &= m[1:, :]
            inner[:, 1:] &= m[:, :-1]
            inner[:, :-1] &= m[:, 1:]
            edges |= m & ~inner
    out[edges] = 255.0
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = max(3, round(max(image.shape[:2]) / 150))
    if boxes is not None:
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
            draw.rectangle([x0, y0, x1, y1], outline=(255, 220, 0), width=max(2, r // 2))
    if points is not None:
        labels = np.ones(len(points), int) if point_labels is None else np.asarray(point_labels)
        for (x, y), lab in zip(np.asarray(points, dtype=float).reshape(-1, 2), labels):
            fill = (40, 220, 40) if lab == 1 else (230, 40, 40)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return img
