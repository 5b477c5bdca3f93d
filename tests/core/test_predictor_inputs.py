"""Prompt edge cases and image inputs on the tiny random model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tinysam_backend import Predictor
from tinysam_backend.errors import ImageError, PromptError


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model)


@pytest.fixture(scope="module")
def emb(predictor):
    rng = np.random.default_rng(0)
    return predictor.embed(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))


def test_embedding_carries_sizes(emb):
    assert emb.original_size == (120, 200)
    assert emb.input_size == (154, 256)  # longest side 256, int(120 * 1.28 + 0.5)
    assert emb.features.shape == (1, 32, 16, 16)


def test_no_prompt_is_a_clear_error(predictor, emb):
    with pytest.raises(PromptError, match="no prompt given"):
        predictor.predict(emb)


def test_points_outside_the_image_still_predict(predictor, emb):
    masks, scores, low = predictor.predict(emb, [[-50.0, 500.0]], [1])
    assert masks.shape == (3, 120, 200) and np.isfinite(scores).all()


def test_box_with_x0_greater_than_x1_is_refused(predictor, emb):
    with pytest.raises(PromptError, match="X0 <= X1"):
        predictor.predict(emb, box=[100, 10, 20, 50])


def test_mask_input_of_wrong_shape_is_refused(predictor, emb):
    with pytest.raises(PromptError, match=r"mask_input must be"):
        predictor.predict(emb, [[10, 10]], [1], mask_input=np.zeros((1, 32, 32), np.float32))


def test_labels_must_be_zero_or_one(predictor, emb):
    with pytest.raises(PromptError, match="point_labels must be 1"):
        predictor.predict(emb, [[10, 10]], [3])


def test_labels_without_coords(predictor, emb):
    with pytest.raises(PromptError, match="together"):
        predictor.predict(emb, point_labels=[1])


def test_nan_point(predictor, emb):
    with pytest.raises(PromptError, match="NaN"):
        predictor.predict(emb, [[np.nan, 1.0]], [1])


def test_refinement_with_previous_logits(predictor, emb):
    _, scores, low = predictor.predict(emb, [[50, 60]], [1])
    best = low[int(np.argmax(scores))]
    masks, _, low2 = predictor.predict(emb, [[50, 60], [120, 80]], [1, 0], mask_input=best)
    assert masks.shape == (3, 120, 200) and not np.allclose(low, low2)


def test_embed_accepts_path_pil_bytes_alike(predictor, tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    feats = [predictor.embed(src).features for src in (arr, path, Image.fromarray(arr), buf.getvalue())]
    for f in feats[1:]:
        assert np.allclose(f.numpy(), feats[0].numpy())


def test_unreadable_image_is_a_clear_error(predictor):
    with pytest.raises(ImageError, match="not a readable image"):
        predictor.embed(b"definitely not an image")


def test_predictor_is_shareable_between_threads(predictor):
    """Two images decoded concurrently give the same results as sequentially."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 255, (90, 90, 3), dtype=np.uint8) for _ in range(4)]

    def run(img):
        e = predictor.embed(img)
        return predictor.predict(e, [[40, 40]], [1])[1]

    seq = [run(i) for i in imgs]
    with ThreadPoolExecutor(4) as pool:
        par = list(pool.map(run, imgs))
    for a, b in zip(seq, par):
        np.testing.assert_allclose(a, b, atol=1e-5)
