"""Point prompts of segment-everything: the regular grid, and TinySAM's second-round points (paper §3.4).

Points are kept normalised to [0, 1] (XY, as fractions of the image width and height) and turned into
pixels by the caller with `* [W, H]`, as the official implementation does, so that pixel coordinates agree
with it to the last bit.
"""

from __future__ import annotations

import numpy as np

# Second-round offsets (dx, dy) in strides around a first-round point, in the official order: the 3×3
# neighbourhood without the centre (dx outer), then the dx = 2 column, the dy = 2 row, the (2, 2) corner.
_NEIGHBOURS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]
SECOND_ROUND_OFFSETS = np.array(_NEIGHBOURS + [(2, dy) for dy in (-1, 0, 1)] + [(dx, 2) for dx in (-1, 0, 1)]
                                + [(2, 2)], dtype=np.int64)


def cell_centre_grid(n: int) -> np.ndarray:
    """(n², 2) normalised XY of the centres of an n×n grid, ((i + 0.5) / n, (j + 0.5) / n), rows first."""
    if n < 1:
        raise ValueError(f"grid side must be >= 1, got {n}")
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1.0 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def second_round_points(first_round: np.ndarray, image_size: tuple[int, int], points_per_side: int,
                        high_confidence: np.ndarray) -> np.ndarray:
    """TinySAM's second-round prompts around the first-round points, outside the high-confidence map.

    first_round: (M, 2) normalised XY of the first-round points; image_size (H, W); points_per_side: the dense
    grid side, which sets the strides sw = W // points_per_side, sh = H // points_per_side; high_confidence:
    (H, W) bool, the union of the kept first-round masks' high-score regions.

    Around (x, y) = first_round * (W, H) the candidates are (x + dx·sw, y + dy·sh) for dx, dy in {-1, 0, 1, 2}
    without (0, 0); dx = 2 only when x + 2·sw < W, dy = 2 only when y + 2·sh < H. A candidate is dropped when
    the map is set at row int(y'), column int(x'). Returns (K, 2) normalised XY in the official order.
    """
    h, w = image_size
    first_round = np.asarray(first_round, dtype=np.float64).reshape(-1, 2)
    high_confidence = np.asarray(high_confidence, dtype=bool)
    if high_confidence.shape != (h, w):
        raise ValueError(f"high_confidence must be the image size {(h, w)}, got {high_confidence.shape}")
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    sw, sh = w // points_per_side, h // points_per_side
    x = first_round[:, 0] * w
    y = first_round[:, 1] * h
    dx, dy = SECOND_ROUND_OFFSETS[:, 0], SECOND_ROUND_OFFSETS[:, 1]
    cx = x[:, None] + sw * dx[None, :]  # (M, 15)
    cy = y[:, None] + sh * dy[None, :]
    valid = np.ones(cx.shape, dtype=bool)
    valid &= (dx[None, :] != 2) | (x[:, None] + sw * 2 < w)
    valid &= (dy[None, :] != 2) | (y[:, None] + sh * 2 < h)
    # int() truncates; first-round points lie at least 2 strides inside the image, so indices are in range,
    # but clip anyway so odd sizes can never index outside the map.
    col = np.clip(np.trunc(cx), 0, w - 1).astype(np.int64)
    row = np.clip(np.trunc(cy), 0, h - 1).astype(np.int64)
    valid &= ~high_confidence[row, col]
    return np.stack([cx[valid] / w, cy[valid] / h], axis=-1)
