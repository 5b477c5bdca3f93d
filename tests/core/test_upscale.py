"""Upscaling low-res logits to the input frame computes only what the crop keeps, with the official values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinysam_backend.transforms import low_res_extent, upscale_logits, upscale_to_input_frame


def _official(low_res: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)[..., : input_size[0],
                                                                                      : input_size[1]]


# Input frames have their long side at 1024 (landscape, portrait, square), plus crops of other callers.
SIZES = [(683, 1024), (1024, 683), (1024, 1024), (1, 1024), (1024, 5), (768, 1024), (1024, 577), (57, 57),
         (300, 450), (1023, 1024)]


@pytest.mark.parametrize("input_size", SIZES)
def test_upscale_to_input_frame_equals_upscaling_everything_then_cropping(input_size):
    torch.manual_seed(0)
    low_res = torch.randn(2, 3, 256, 256)
    out = upscale_to_input_frame(low_res, 1024, input_size)
    assert out.shape == (2, 3, *input_size)
    assert torch.equal(out, _official(low_res, input_size))


@pytest.mark.parametrize("input_size", [(683, 1024), (1024, 683), (1, 1024)])
def test_logits_cut_to_the_rows_the_crop_reads_give_the_same_values(input_size):
    """A decoder may return only the low-res rows (or, transposed, columns) the crop reads; cutting one row fewer
    is refused rather than read past."""
    torch.manual_seed(1)
    low_res = torch.randn(1, 1, 256, 256)
    rows, cols = low_res_extent(256, 1024, input_size)
    assert rows < 256 or cols < 256
    assert rows <= 256 and cols <= 256 and 4 * rows >= input_size[0] and 4 * cols >= input_size[1]
    cut = low_res[..., :rows, :] if rows < 256 else low_res[..., :, :cols]
    assert torch.equal(upscale_to_input_frame(cut, 1024, input_size), _official(low_res, input_size))
    too_short = cut[..., :-1, :] if rows < 256 else cut[..., :, :-1]
    with pytest.raises(ValueError, match="cut inside"):
        upscale_to_input_frame(too_short, 1024, input_size)


def test_upscale_logits_to_the_original_size_is_unchanged():
    torch.manual_seed(2)
    low_res = torch.randn(1, 3, 256, 256)
    out = upscale_logits(low_res, 1024, (683, 1024), (480, 720))
    expected = F.interpolate(_official(low_res, (683, 1024)), (480, 720), mode="bilinear", align_corners=False)
    assert torch.equal(out, expected)
