"""Shared mask maths (`tinysam_backend.masks`): the stability score and COCO RLE, each against an independent
reference (the definition counted pixel by pixel; pycocotools' own encoder)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tinysam_backend.masks import decode_rle, encode_rle, encode_rle_transposed, stability_score


def test_stability_score_is_iou_of_offset_masks():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(4, 20, 30)).astype(np.float32)
    logits[3] = -5.0  # nothing above -1: 0 / 0
    got = stability_score(logits, 0.0, 1.0)
    for i in range(3):
        high, low = logits[i] > 1.0, logits[i] > -1.0
        assert got[i] == np.float32(np.float32((high & low).sum()) / np.float32((high | low).sum()))
    assert np.isnan(got[3]) and got.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        stability_score(logits[0])


def test_rle_round_trip_and_matches_pycocotools():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 13, 17)) > 0.6
    rles = encode_rle(masks)
    assert rles == encode_rle_transposed(np.ascontiguousarray(masks.transpose(0, 2, 1)))
    for m, rle in zip(masks, rles):
        assert isinstance(rle["counts"], str) and rle["size"] == [13, 17]
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode("ascii")
        assert (decode_rle(rle) == m).all()
    assert encode_rle(np.zeros((0, 4, 4), bool)) == []
