"""The model contract (`modeling.contract`): one preprocessing for every model, and the Protocol the models meet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tinysam_backend import Predictor
from tinysam_backend.engines.engine_sam import EngineSam
from tinysam_backend.modeling import SamModel, image_to_input, normalize_and_pad, resized_input


def _expected_input(rgb: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Written out from the definition: Pillow bilinear resize of the longest side to `side`, ImageNet mean/std in
    0..255, zeros below and right of the image."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), dtype=np.float64)
    norm = (resized - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    out = np.zeros((1, 3, side, side))
    out[0, :, :nh, :nw] = norm.transpose(2, 0, 1)
    return out, (nh, nw)


@pytest.mark.parametrize("shape", [(120, 200), (300, 77), (256, 256), (31, 900)])
def test_image_to_input_follows_the_definition(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    x, input_size = image_to_input(rgb, 256)
    expected, expected_size = _expected_input(rgb, 256)
    assert input_size == expected_size and x.dtype == torch.float32 and x.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=2e-6)
    assert (x[..., input_size[0]:, :] == 0).all() and (x[..., input_size[1]:] == 0).all()


def test_every_path_uses_the_same_preprocessing(tiny_model):
    """`Sam.preprocess`, `EngineSam.preprocess` and `Predictor.prepare` give `image_to_input`'s tensor bit for bit."""
    rgb = np.random.default_rng(3).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    ref, input_size = image_to_input(rgb, tiny_model.image_size)
    raw, raw_size = resized_input(rgb, tiny_model.image_size)
    assert raw_size == input_size and raw.shape == (1, 3, *input_size)
    assert raw.min() >= 0 and raw.max() <= 255 and torch.equal(raw, raw.round())  # still pixel values
    assert torch.equal(tiny_model.preprocess(raw), ref)
    assert torch.equal(EngineSam(tiny_model).preprocess(raw), ref)
    x, original, resized = Predictor(tiny_model).prepare(rgb)
    assert torch.equal(x, ref) and original == (90, 140) and resized == input_size


def test_normalize_and_pad_refuses_an_image_larger_than_the_input():
    with pytest.raises(ValueError, match=r"300x200 \(HxW\) pixels does not fit the model's 256x256 input"):
        normalize_and_pad(torch.zeros(1, 3, 300, 200), 256)


def test_models_meet_the_protocol(tiny_model):
    assert isinstance(tiny_model, SamModel) and isinstance(EngineSam(tiny_model), SamModel)

    class EncoderOnly:
        image_size = 256

        def preprocess(self, x):
            return x

        def encode_image(self, x):
            return x

    assert not isinstance(EncoderOnly(), SamModel)  # no decode
