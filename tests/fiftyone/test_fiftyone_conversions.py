"""Pure conversions between full-image masks, FiftyOne's (relative box, cropped mask) form and COCO RLE."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinysam_backend.fiftyone_adapter import (
    best_of_three,
    box_and_crop_to_mask,
    mask_to_box_and_crop,
    mask_to_rle,
    mean_best_match_iou,
    relative_box_to_pixels,
    relative_box_to_xyxy,
    render_preview,
    rle_to_mask,
)


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


def test_rle_round_trip_with_each_counts_form():
    from pycocotools import mask as mask_utils

    m = _mask(13, 17, 3, 9, 2, 15)
    m[5, 5] = False
    rle = mask_to_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [13, 17]
    np.testing.assert_array_equal(rle_to_mask(rle), m)
    np.testing.assert_array_equal(rle_to_mask({"size": rle["size"], "counts": rle["counts"].encode()}), m)
    # uncompressed counts: column-major runs starting with zeros
    flat = m.flatten(order="F").astype(np.uint8)
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    np.testing.assert_array_equal(rle_to_mask({"size": [13, 17], "counts": runs}), m)
    assert mask_utils.area(mask_utils.frPyObjects({"size": [13, 17], "counts": runs}, 13, 17)) == m.sum()
    with pytest.raises(ValueError, match="COCO RLE"):
        rle_to_mask({"counts": "x"})


def test_mean_best_match_iou_known_values():
    a = _mask(10, 10, 0, 4, 0, 4)          # 16 px
    b = _mask(10, 10, 0, 4, 2, 6)          # overlaps a by 8 → IoU 8/24
    c = _mask(10, 10, 6, 10, 6, 10)
    assert mean_best_match_iou([a, c], [a, b]) == pytest.approx((1.0 + 0.0) / 2)
    assert mean_best_match_iou([a], [b]) == pytest.approx(8 / 24)
    assert mean_best_match_iou([a], []) == 0.0
    assert mean_best_match_iou([], [a]) is None


def test_best_of_three_takes_the_highest_predicted_iou():
    masks = np.zeros((2, 3, 4, 4), bool)
    masks[0, 1, 0, 0] = True
    masks[1, 2, 3, 3] = True
    best, scores = best_of_three(masks, np.array([[0.1, 0.9, 0.5], [0.2, 0.3, 0.4]], np.float32))
    assert best[0, 0, 0] and best[1, 3, 3] and best.sum() == 2
    np.testing.assert_allclose(scores, [0.9, 0.4])
    with pytest.raises(ValueError, match="expected masks"):
        best_of_three(masks[0], np.zeros((3,)))


def test_render_preview_puts_predictions_left_and_ground_truth_right():
    img = np.full((20, 30, 3), 100, np.uint8)
    pred = _mask(20, 30, 2, 8, 2, 8)
    out = np.asarray(render_preview(img, [pred], []))
    assert out.shape == (20 + 22, 2 * 30 + 8, 3)
    left, right = out[22:, :30], out[22:, 38:]
    assert (left[4, 4] != 100).any() and (right == 100).all()
    with pytest.raises(ValueError, match="uint8"):
        render_preview(img.astype(np.float32), [pred])


def test_masks_for_boxes_equals_best_of_three_of_the_full_prediction(tiny_model):
    from tinysam_backend import Predictor
    from tinysam_backend.fiftyone_adapter import masks_for_boxes

    predictor = Predictor(tiny_model)
    rng = np.random.default_rng(0)
    emb = predictor.embed(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    boxes = np.array([[2, 3, 30, 20], [10, 5, 58, 39], [0, 0, 60, 40]], np.float64)
    masks, scores, _ = predictor.predict_batch(emb, boxes=boxes)
    want_masks, want_scores = best_of_three(masks, scores)
    got_masks, got_scores = masks_for_boxes(predictor, emb, boxes, boxes_per_batch=2)
    np.testing.assert_array_equal(got_masks, want_masks)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)  # batches of 2 vs 3
