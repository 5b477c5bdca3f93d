"""First-round grid and TinySAM's second-round points (the official candidate rule)."""

from __future__ import annotations

import numpy as np
import pytest

from tinysam_backend.everything.point_grids import cell_centre_grid, second_round_points


def reference_second_round(first, size, pps, high):
    """The rule of the issue, one candidate at a time."""
    h, w = size
    sw, sh = w // pps, h // pps
    out = []
    for fx, fy in first:
        x, y = fx * w, fy * h
        offsets = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]
        if x + 2 * sw < w:
            offsets += [(2, dy) for dy in (-1, 0, 1)]
        if y + 2 * sh < h:
            offsets += [(dx, 2) for dx in (-1, 0, 1)]
        if x + 2 * sw < w and y + 2 * sh < h:
            offsets.append((2, 2))
        for dx, dy in offsets:
            cx, cy = x + dx * sw, y + dy * sh
            if not high[int(cy), int(cx)]:
                out.append((cx / w, cy / h))
    return np.array(out).reshape(-1, 2)


def test_cell_centre_grid():
    g = cell_centre_grid(4)
    assert g.shape == (16, 2)
    np.testing.assert_allclose(g[:4, 0], [0.125, 0.375, 0.625, 0.875])  # x varies fastest
    np.testing.assert_allclose(g[::4, 1], [0.125, 0.375, 0.625, 0.875])
    assert cell_centre_grid(1).tolist() == [[0.5, 0.5]]
    with pytest.raises(ValueError):
        cell_centre_grid(0)


@pytest.mark.parametrize("size,pps", [((512, 512), 32), ((400, 600), 32), ((400, 600), 16), ((37, 101), 8),
                                      ((1024, 768), 32)])
def test_second_round_matches_rule(size, pps):
    rng = np.random.default_rng(sum(size) + pps)
    first = cell_centre_grid(pps // 4)
    high = rng.random(size) > 0.7
    ours = second_round_points(first, size, pps, high)
    ref = reference_second_round(first, size, pps, high)
    np.testing.assert_array_equal(ours, ref)  # same points, same order, same bits


def test_second_round_counts_and_boundaries():
    size, pps = (512, 512), 32
    first = cell_centre_grid(8)
    pts = second_round_points(first, size, pps, np.zeros(size, bool))
    # 7×7 inner points get all 15, the last column and row lack dx = 2 / dy = 2, the corner has 8.
    assert len(pts) == 49 * 15 + 14 * 11 + 8
    px = pts * [512, 512]
    assert (px >= 0).all() and (px < 512).all()
    assert len(second_round_points(first, size, pps, np.ones(size, bool))) == 0  # all high: no candidates


def test_second_round_validates():
    with pytest.raises(ValueError, match="image size"):
        second_round_points(cell_centre_grid(2), (10, 10), 8, np.zeros((5, 5), bool))
