"""Pure post-processing functions of segment-everything, each against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from tinysam_backend.everything.postprocess import (
    box_nms,
    box_xyxy_to_xywh,
    masks_to_boxes,
    remove_small_regions,
)


def brute_force_nms(boxes, scores, thresh):
    """Textbook greedy NMS, one pair at a time (box area without +1, suppress when IoU > thresh)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep, removed = [], set()
    for pos, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            ax0, ay0, ax1, ay1 = boxes[i]
            bx0, by0, bx1, by1 = boxes[j]
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            inter = iw * ih
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            if union > 0 and inter / union > thresh:
                removed.add(j)
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7, 1.0])
def test_box_nms_matches_brute_force(seed, thresh):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    xy = rng.integers(0, 50, size=(n, 2))
    wh = rng.integers(0, 30, size=(n, 2))  # zero-size boxes included
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
    scores = rng.choice(np.linspace(0, 1, 12), size=n).astype(np.float32)  # ties on purpose
    ours = box_nms(boxes, scores, thresh, chunk=7).tolist()
    assert ours == brute_force_nms(boxes.tolist(), scores.tolist(), thresh)


def test_box_nms_edge_cases():
    assert box_nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.7).tolist() == [1, 2]
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), 1.0).tolist() == [1, 0, 2]  # 1.0 suppresses nothing
    with pytest.raises(ValueError, match="boxes must be"):
        box_nms(np.zeros((3, 3)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must be"):
        box_nms(np.zeros((3, 4)), np.zeros(2), 0.5)


def test_box_nms_iou_is_inter_over_union_and_zero_area_pairs_never_suppress():
    # IoU([0,0,10,10], [5,5,15,15]) = 25 / 175: suppressed just below it, kept at it (suppression is IoU > thresh)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], dtype=float)
    scores = np.array([0.9, 0.5])
    assert box_nms(boxes, scores, np.nextafter(25 / 175, 0)).tolist() == [0]
    assert box_nms(boxes, scores, 25 / 175).tolist() == [0, 1]
    assert box_nms(boxes[::-1].copy(), scores, np.nextafter(25 / 175, 0)).tolist() == [0]  # symmetric
    same = np.array([[3, 3, 8, 8], [3, 3, 8, 8]], dtype=float)  # IoU 1: suppressed at any threshold below 1
    assert box_nms(same, scores, 0.999).tolist() == [0]
    empty = np.zeros((2, 4))  # two zero-area boxes: 0 / 0, never above a threshold
    assert box_nms(empty, scores, 0.0).tolist() == [0, 1]


def test_masks_to_boxes_inclusive_and_empty():
    masks = np.zeros((3, 8, 10), dtype=bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 0] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[3, 2, 8, 4], [0, 7, 0, 7], [0, 0, 0, 0]]
    assert box_xyxy_to_xywh(boxes).tolist() == [[3, 2, 5, 2], [0, 7, 0, 0], [0, 0, 0, 0]]


def test_remove_small_regions():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a 1-pixel hole
    mask[15:17, 15:17] = True  # a 4-pixel island
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed and filled[5, 5] and filled[15:17, 15:17].all()
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[15:17, 15:17].any() and cleaned[2:12, 2:12].all()
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and (same == cleaned).all()
    tiny = np.zeros((10, 10), dtype=bool)
    tiny[1, 1] = True
    tiny[5:7, 5:7] = True
    kept, changed = remove_small_regions(tiny, 100, "islands")  # all small: the largest one stays
    assert changed and kept[5:7, 5:7].all() and not kept[1, 1]
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 5, "both")
