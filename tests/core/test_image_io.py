"""Image reading: modes, EXIF orientation, 16-bit scaling, format allow-list, bombs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tinysam_backend.errors import ImageError
from tinysam_backend.image_io import load_image


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_grayscale_becomes_three_equal_channels():
    rgb = load_image(_encode(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")))
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_rgba_drops_alpha():
    arr = np.zeros((4, 5, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 10
    rgb = load_image(_encode(Image.fromarray(arr, "RGBA")))
    assert rgb.shape == (4, 5, 3) and (rgb[..., 0] == 200).all()


def test_palette_with_transparency():
    img = Image.new("P", (6, 6))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    assert load_image(_encode(img)).shape == (6, 6, 3)


def test_16bit_is_scaled_not_clamped():
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    rgb = load_image(_encode(Image.fromarray(arr)))
    assert 120 <= int(rgb[0, 0, 0]) <= 135


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    rgb = load_image(_encode(img, "JPEG", exif=exif))
    assert rgb.shape == (20, 10, 3)


def test_pdf_is_not_an_accepted_format():
    with pytest.raises(ImageError, match="accepted formats"):
        load_image(b"%PDF-1.4\n%garbage")


def test_decompression_bomb_is_refused():
    data = _encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageError, match="limit|bomb"):
        load_image(data, max_pixels=1_000_000)


def test_wrong_array_shape():
    with pytest.raises(ImageError, match="HxW"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_the_configured_pixel_limit_is_the_only_one():
    # 95 Mpx: above Pillow's own warning threshold (89.48 Mpx), below the configured default (100 M).
    big = _encode(Image.new("1", (10_000, 9_500)), optimize=True)
    rgb = load_image(big, max_pixels=100_000_000)
    assert rgb.shape == (9_500, 10_000, 3) and rgb.dtype == np.uint8
    del rgb
    with pytest.raises(ImageError, match=r"10000x9500 = 95000000 pixels, more than the limit of 90000000"):
        load_image(big, max_pixels=90_000_000)


def test_pixel_limit_above_pillows_ceiling_is_refused_at_start_up():
    from tinysam_backend.config import DEFAULT_MAX_IMAGE_PIXELS, Settings

    assert Settings.from_env({}).max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == Settings().max_image_pixels
    assert Settings.from_env({"TINYSAM_MAX_IMAGE_PIXELS": "150000000"}).max_image_pixels == 150_000_000
    with pytest.raises(ValueError, match="between 1 and 178956970"):
        Settings.from_env({"TINYSAM_MAX_IMAGE_PIXELS": "300000000"})
    with pytest.raises(ValueError, match="integer number of pixels, got 'lots'"):
        Settings.from_env({"TINYSAM_MAX_IMAGE_PIXELS": "lots"})


def test_extreme_aspect_ratio_is_an_image_error():
    from tinysam_backend.transforms import resized_shape

    assert resized_shape(1, 2048, 1024) == (1, 1024)
    assert resized_shape(3000, 2, 1024) == (1024, 1)
    for h, w in ((1, 5000), (1, 2049), (5000, 1)):
        with pytest.raises(ImageError, match=rf"{w}x{h} pixels.*aspect ratios above 2048:1"):
            resized_shape(h, w, 1024)


def test_extreme_aspect_ratio_through_the_predictor(tiny_model):
    from tinysam_backend import Predictor

    with pytest.raises(ImageError, match="aspect ratios above 512:1"):  # the tiny model's input is 256 pixels
        Predictor(tiny_model.eval()).embed(np.zeros((1, 600, 3), np.uint8))
