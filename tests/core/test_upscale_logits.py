"""upscale_logits is the official postprocessing (two bilinear interpolations with a crop between them), whichever
way it computes it: a composed three-tap filter when the image shrinks, the two steps on the kept part otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinysam_backend.transforms import resized_shape, upscale_logits


def _official(low: torch.Tensor, image_size: int, input_size: tuple[int, int], original: tuple[int, int]):
    x = F.interpolate(low, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original, mode="bilinear", align_corners=False)


# The composed filter's weights come from source positions rounded once to float32, as torch's CPU kernel rounds
# them where it fuses the multiply-add (then the values agree to ~1e-7 of the largest logit); a kernel that rounds
# twice moves a position by one float32 step, up to ~1e-5 of the largest logit.
_ROUNDING = 2e-5
SHRINKING = [(512, 512), (480, 640), (70, 50), (2, 3), (333, 1024), (1024, 1024), (1023, 17)]
GROWING = [(1080, 1920), (3000, 2000), (1025, 1023), (7, 2000), (2000, 7)]


@pytest.mark.parametrize("original", SHRINKING + GROWING)
def test_equals_the_two_interpolations(original):
    image_size = 1024
    input_size = resized_shape(*original, image_size)
    low = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(sum(original))) * 8
    ours = upscale_logits(low, image_size, input_size, original)
    ref = _official(low, image_size, input_size, original)
    assert ours.shape == ref.shape == (2, 3, *original)
    if original in GROWING:  # the official steps on the low-res part the crop keeps: the same arithmetic
        assert torch.equal(ours, ref)
    else:  # one composed filter: the same linear map, rounded differently
        torch.testing.assert_close(ours, ref, atol=_ROUNDING * ref.abs().max().item(), rtol=0)


def test_small_model_frames():
    # The tiny test model: 64 × 64 low-res logits for a 256 input frame.
    low = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    for original in ((70, 50), (90, 120), (400, 300)):
        input_size = resized_shape(*original, 256)
        ref = _official(low, 256, input_size, original)
        torch.testing.assert_close(upscale_logits(low, 256, input_size, original), ref,
                                   atol=_ROUNDING * ref.abs().max().item(), rtol=0)
