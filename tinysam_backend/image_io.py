"""Reading images into the H×W×3 uint8 RGB frame that Label Studio and FiftyOne display."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_IMAGE_PIXELS
from .errors import ImageError

ImageSource = np.ndarray | Image.Image | str | Path | bytes

# Raster formats users label; formats with decoders outside Pillow's pixel check (PDF, FITS, EPS…) are refused.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "MPO")


def pillow_pixel_ceiling() -> int | None:
    """Pixels above which Pillow itself refuses to open an image (DecompressionBombError), whatever we allow."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * limit


def _too_large(w: int, h: int, max_pixels: int) -> ImageError:
    return ImageError(f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} "
                      "(TINYSAM_MAX_IMAGE_PIXELS)")


def _open(fp, max_pixels: int) -> Image.Image:
    """Open and decode within `max_pixels`, the one pixel limit: the size is checked from the header, before any
    pixel is decoded. Pillow's own bomb warning (at 89.5 Mpx) is not escalated, so the configured limit is the one
    that applies; its hard error (at twice that) can only refuse images above our limit, unless the configured
    limit is above Pillow's ceiling, which the message then says."""
    try:
        Image.init()
        img = Image.open(fp, formats=[f for f in ALLOWED_FORMATS if f in Image.OPEN])
        w, h = img.size
        if w * h > max_pixels:
            raise _too_large(w, h, max_pixels)
        img.load()
    except Image.DecompressionBombError as e:
        ceiling = pillow_pixel_ceiling()
        if ceiling is not None and max_pixels >= ceiling:
            raise ImageError(f"image refused by Pillow's own ceiling of {ceiling} pixels, which is below the "
                             f"configured limit of {max_pixels} (TINYSAM_MAX_IMAGE_PIXELS): {e}") from None
        raise ImageError(f"image is more than the limit of {max_pixels} pixels (TINYSAM_MAX_IMAGE_PIXELS): "
                         f"{e}") from None
    except UnidentifiedImageError as e:
        raise ImageError(f"not a readable image in one of the accepted formats {ALLOWED_FORMATS}") from e
    except OSError as e:
        raise ImageError(f"could not decode image: {e}") from e
    return img


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image in any mode → H×W×3 uint8 RGB with EXIF orientation applied."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        return array_to_rgb(arr)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """H×W, H×W×1, H×W×3 or H×W×4 array (uint8, uint16, bool or float in [0, 1]) → H×W×3 uint8."""
    if not isinstance(arr, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image has an empty side: shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype in (np.uint16, np.int32, np.uint32, np.int64):
        # 16-bit data: scale to 8 bits (Pillow's convert would clamp instead).
        out = (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("float image contains NaN or infinity")
        out = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image dtype {arr.dtype}; expected uint8, uint16, bool or float")
    return np.ascontiguousarray(out)


def load_image(src: ImageSource, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any accepted image source → H×W×3 uint8 RGB, in the displayed orientation.

    src: a numpy array (taken as already oriented), a PIL image, a file path, or encoded bytes.
    Raises ImageError for unreadable, unsupported or too large images.
    """
    if isinstance(src, np.ndarray):
        rgb = array_to_rgb(src)
    elif isinstance(src, Image.Image):
        w, h = src.size
        if w * h > max_pixels:
            raise _too_large(w, h, max_pixels)
        rgb = pil_to_rgb(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        rgb = pil_to_rgb(_open(io.BytesIO(bytes(src)), max_pixels))
    elif isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        with path.open("rb") as f:
            rgb = pil_to_rgb(_open(f, max_pixels))
    else:
        raise ImageError(f"expected an ndarray, PIL image, path or bytes; got {type(src).__name__}")
    if rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise _too_large(rgb.shape[1], rgb.shape[0], max_pixels)
    return rgb
