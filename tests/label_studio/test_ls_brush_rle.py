"""Brush RLE: byte-identical to label-studio-sdk's encoder, decodable by its decoder, round trips; its JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinysam_backend.label_studio.brush_rle import (
    BrushRLEError,
    brush_rle_to_mask,
    decode_brush_values,
    encode_brush_values,
    mask_to_brush_rle,
    rle_json,
)

sdk_brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk not installed")


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((5, 7), bool)
    yield np.eye(9, dtype=bool)
    yield rng.random((31, 17)) < 0.5  # many short runs
    m = np.zeros((600, 500), bool)
    m[100:400, 50:450] = True  # runs of 400 pixels = 1600 values (8-bit and 16-bit length fields)
    yield m
    m = np.zeros((300, 300), bool)
    m[:, :] = True
    m[150, 150] = False  # runs longer than 65536 values, split into several tokens
    yield m


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_same_bytes_as_label_studio_sdk(mask):
    ours = mask_to_brush_rle(mask)
    theirs = sdk_brush.mask2rle(mask.astype(np.uint8) * 255)
    assert ours.dtype == np.uint8 and ours.tolist() == theirs
    decoded = sdk_brush.decode_rle(ours).reshape(mask.shape[0], mask.shape[1], 4)
    assert np.array_equal(decoded[..., 3] > 0, mask)
    assert np.array_equal(brush_rle_to_mask(ours, *mask.shape), mask)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_mask_round_trip(mask):
    rle = mask_to_brush_rle(mask)
    assert rle.dtype == np.uint8 and rle.ndim == 1
    assert np.array_equal(brush_rle_to_mask(rle.tolist(), *mask.shape), mask)
    assert np.array_equal(brush_rle_to_mask(rle, *mask.shape), mask)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.integers(1, 300), elements=st.integers(0, 3)))
def test_values_match_sdk_encoder(values):
    # Arbitrary value arrays exercise the single-value tokens the mask encoder never needs.
    assert encode_brush_values(values).tolist() == sdk_brush.encode_rle(values)
    assert np.array_equal(decode_brush_values(encode_brush_values(values)), values)


def test_wrong_size_is_refused():
    rle = mask_to_brush_rle(np.ones((4, 4), bool))
    with pytest.raises(BrushRLEError, match="expected 5x4x4"):
        brush_rle_to_mask(rle, 5, 4)


@pytest.mark.parametrize("bad", [np.zeros((0, 3), bool), np.zeros((2, 2, 2), bool)])
def test_bad_masks_are_refused(bad):
    with pytest.raises(BrushRLEError, match="mask"):
        mask_to_brush_rle(bad)


def test_truncated_and_lying_rle_are_refused():
    rle = mask_to_brush_rle(np.random.default_rng(1).random((20, 20)) < 0.5)
    with pytest.raises(BrushRLEError, match="ends early"):
        decode_brush_values(rle[: len(rle) // 2])
    # A header claiming 2^32-1 values in a few bytes must not allocate gigabytes.
    with pytest.raises(BrushRLEError, match="more than its"):
        decode_brush_values([255, 255, 255, 255, 0x0E, 0x23, 0x7F, 0, 0, 0])
    with pytest.raises(BrushRLEError, match="byte values"):
        decode_brush_values([0, 300, 1])
    with pytest.raises(BrushRLEError, match="byte values"):
        decode_brush_values(np.array([0, 300, 1]))


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.integers(0, 400)))
def test_rle_json_is_the_json_list(rle):
    assert json.loads(rle_json(rle)) == rle.tolist()
    assert rle_json(rle) == json.dumps(rle.tolist(), separators=(",", ":")).encode()
