"""The decoder graph's prompt layout: model-API points and boxes → one labelled point list (pure numpy)."""

from __future__ import annotations

import numpy as np

PAD_LABEL = -1.0
BOX_TOP_LEFT_LABEL = 2.0
BOX_BOTTOM_RIGHT_LABEL = 3.0


def prompt_to_points(points: tuple[np.ndarray, np.ndarray] | None, boxes: np.ndarray | None,
                     batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Model-API prompts (input frame) → (coords (B, N, 2) float32, labels (B, N) float32) for the decoder graph.

    Order as `PromptEncoder.forward`: the points, a padding point (label -1) when no box is given, then the
    two box corners labelled 2 and 3. No points and no box gives N = 0 (a mask-only prompt).
    """
    parts_c: list[np.ndarray] = []
    parts_l: list[np.ndarray] = []
    if points is not None:
        c, lab = np.asarray(points[0], dtype=np.float32), np.asarray(points[1], dtype=np.float32)
        if c.ndim != 3 or c.shape[0] != batch or c.shape[-1] != 2 or lab.shape != c.shape[:2]:
            raise ValueError(f"points must be ((B, N, 2), (B, N)) with B = {batch}, got {c.shape} and {lab.shape}")
        parts_c.append(c)
        parts_l.append(lab)
        if boxes is None:
            parts_c.append(np.zeros((batch, 1, 2), np.float32))
            parts_l.append(np.full((batch, 1), PAD_LABEL, np.float32))
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float32)
        if b.shape != (batch, 4):
            raise ValueError(f"boxes must be (B, 4) with B = {batch}, got {b.shape}")
        parts_c.append(b.reshape(batch, 2, 2))
        parts_l.append(np.tile(np.array([[BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL]], np.float32), (batch, 1)))
    if not parts_c:
        return np.zeros((batch, 0, 2), np.float32), np.zeros((batch, 0), np.float32)
    return np.concatenate(parts_c, axis=1), np.concatenate(parts_l, axis=1)
