"""Pure conversions between full-image masks and FiftyOne's (relative box, cropped mask) form; the shared mask
maths of `tinysam_backend.masks` (best mask per prompt, mask IoU)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinysam_backend.fiftyone_adapter import (
    box_and_crop_to_mask,
    mask_to_box_and_crop,
    relative_box_to_pixels,
    relative_box_to_xyxy,
    relative_points_to_xy,
    render_preview,
)
from tinysam_backend.masks import best_masks_for_prompts, mask_iou_matrix, mean_best_match_iou


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_to_box_and_crop_is_the_tight_inclusive_extent():
    m = _mask(10, 20, 2, 5, 4, 10)
    m[3, 6] = False  # a hole stays in the crop
    box, crop = mask_to_box_and_crop(m)
    assert box == pytest.approx([4 / 20, 2 / 10, 6 / 20, 3 / 10])
    assert crop.shape == (3, 6) and crop.dtype == bool and not crop[1, 2]


def test_empty_or_wrong_rank_mask_is_refused():
    with pytest.raises(ValueError, match="empty"):
        mask_to_box_and_crop(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_box_and_crop(np.zeros((4, 4, 3), bool))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), data=st.data())
def test_box_and_crop_round_trip(h, w, data):
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    rng = np.random.default_rng(h * 100 + w)
    m = _mask(h, w, y0, y1, x0, x1) & (rng.random((h, w)) > 0.3)
    m[y0, x0] = m[y1 - 1, x1 - 1] = True
    box, crop = mask_to_box_and_crop(m)
    np.testing.assert_array_equal(box_and_crop_to_mask(box, crop, (h, w)), m)


def test_matches_fiftyone_from_mask():
    fo = pytest.importorskip("fiftyone")
    m = _mask(30, 50, 7, 19, 11, 40)
    m[10, 20] = False
    det = fo.Detection.from_mask(m)
    box, crop = mask_to_box_and_crop(m)
    assert box == pytest.approx(det.bounding_box)
    np.testing.assert_array_equal(crop, det.mask)


def test_crop_of_another_size_is_resized_nearest():
    crop = np.array([[1, 0], [0, 1]], bool)
    full = box_and_crop_to_mask([0.0, 0.0, 0.5, 0.5], crop, (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[:2, :2] = True
    expected[2:4, 2:4] = True
    np.testing.assert_array_equal(full, expected)


def test_relative_boxes_to_pixels_and_xyxy():
    assert relative_box_to_pixels([0.1, 0.2, 0.5, 0.5], (10, 20)) == (2, 2, 12, 7)
    assert relative_box_to_pixels([-0.1, 0.9, 0.5, 0.5], (10, 10)) == (0, 9, 4, 10)  # clipped
    np.testing.assert_allclose(relative_box_to_xyxy([0.1, 0.2, 0.5, 0.5], (10, 20)), [2, 2, 12, 7])
    with pytest.raises(ValueError, match=r"\[x, y, w, h\]"):
        relative_box_to_pixels([0, 0, 1], (4, 4))


def test_relative_points_drop_invisible_points():
    xy = relative_points_to_xy([[0.5, 0.25], [float("nan"), float("nan")], [0.0, 1.0]], (40, 60))
    np.testing.assert_allclose(xy, [[30.0, 10.0], [0.0, 40.0]])


def test_mean_best_match_iou_known_values():
    a = _mask(10, 10, 0, 4, 0, 4)          # 16 px
    b = _mask(10, 10, 0, 4, 2, 6)          # overlaps a by 8 → IoU 8/24
    c = _mask(10, 10, 6, 10, 6, 10)
    assert mean_best_match_iou([a, c], [a, b]) == pytest.approx((1.0 + 0.0) / 2)
    assert mean_best_match_iou([a], [b]) == pytest.approx(8 / 24)
    assert mean_best_match_iou([a], []) == 0.0
    assert mean_best_match_iou([], [a]) is None


def test_mask_iou_matrix_known_values_and_size_check():
    a = _mask(10, 10, 0, 4, 0, 4)
    b = _mask(10, 10, 0, 4, 2, 6)
    np.testing.assert_allclose(mask_iou_matrix([a, b], [a]), [[1.0], [8 / 24]])
    assert mask_iou_matrix([], [a]).shape == (0, 1)
    with pytest.raises(ValueError, match="one size"):
        mask_iou_matrix([a], [np.zeros((5, 5), bool)])


def test_render_preview_puts_predictions_left_and_ground_truth_right():
    img = np.full((20, 30, 3), 100, np.uint8)
    pred = _mask(20, 30, 2, 8, 2, 8)
    out = np.asarray(render_preview(img, [pred], []))
    assert out.shape == (20 + 22, 2 * 30 + 8, 3)
    left, right = out[22:, :30], out[22:, 38:]
    assert (left[4, 4] != 100).any() and (right == 100).all()
    with pytest.raises(ValueError, match="uint8"):
        render_preview(img.astype(np.float32), [pred])


def test_best_masks_for_prompts_is_the_highest_scored_of_the_three_full_masks(tiny_model):
    from tinysam_backend import Predictor

    predictor = Predictor(tiny_model)
    rng = np.random.default_rng(0)
    emb = predictor.embed(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    boxes = np.array([[2, 3, 30, 20], [10, 5, 58, 39], [0, 0, 60, 40]], np.float64)
    masks, scores, _ = predictor.predict_batch(emb, boxes=boxes)
    best = scores.argmax(axis=1)
    got_masks, got_scores = best_masks_for_prompts(predictor, emb, boxes=boxes, prompts_per_batch=2)
    np.testing.assert_array_equal(got_masks, masks[np.arange(3), best])
    np.testing.assert_allclose(got_scores, scores[np.arange(3), best], rtol=1e-5, atol=1e-6)  # batches of 2 vs 3
    points = np.array([[[10, 10]], [[40, 30]]], np.float64)
    masks, scores, _ = predictor.predict_batch(emb, point_coords=points, point_labels=np.ones((2, 1)))
    best = scores.argmax(axis=1)
    got_masks, _ = best_masks_for_prompts(predictor, emb, point_coords=points, prompts_per_batch=1)
    np.testing.assert_array_equal(got_masks, masks[np.arange(2), best])
    with pytest.raises(ValueError, match="neither"):
        best_masks_for_prompts(predictor, emb)
