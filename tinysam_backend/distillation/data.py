"""Distillation data: a folder of images, optionally with COCO instance annotations as ground truth.

Every sample is brought into the model's input frame once: resized so the longest side is `image_size`
(as the predictor does), normalised and zero-padded to S × S. Ground-truth masks and the valid (unpadded)
region are given on the decoder's low-res grid (L × L, L = S / 4), where losses and prompt sampling work.
Images without annotations (or with no annotation file) are distilled with the teacher's masks as targets.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..image_io import load_image
from ..modeling.contract import image_to_input
from ..transforms import resized_shape

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class DistillSample:
    """One image in the input frame.

    key: content hash of the image file (names the teacher-embedding cache entry);
    image (3, S, S) normalised and padded; valid (L, L) bool, the unpadded region; gt (G, L, L) bool, G ≥ 0.
    """

    index: int
    key: str
    image: torch.Tensor
    valid: torch.Tensor
    gt: torch.Tensor


def preprocess_image(rgb: np.ndarray, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """H×W×3 uint8 RGB → (3, S, S) normalised, zero-padded tensor and the resized (h, w) (the model's
    preprocessing, `modeling.contract.image_to_input`, without the batch axis)."""
    x, input_size = image_to_input(rgb, image_size)
    return x[0], input_size


def mask_to_low_res(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """H×W bool mask in original pixels → (L, L) bool on the decoder grid of the padded input frame.

    Nearest resize to the input frame, zero padding to S × S, then a cell is in the mask when at least half
    of its S/L × S/L input pixels are.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D H×W mask, got shape {mask.shape}")
    h, w = resized_shape(mask.shape[0], mask.shape[1], image_size)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    full = torch.zeros((image_size, image_size))
    full[:h, :w] = torch.from_numpy(resized).float()
    return F.avg_pool2d(full[None, None], 4)[0, 0] >= 0.5


def valid_region(input_size: tuple[int, int], image_size: int) -> torch.Tensor:
    """(L, L) bool: the low-res cells that cover image content (not padding)."""
    full = torch.zeros((image_size, image_size))
    full[: input_size[0], : input_size[1]] = 1.0
    return F.avg_pool2d(full[None, None], 4)[0, 0] >= 0.5


class ImageFolderDataset:
    """Images under `images_dir` (sorted, recursive), with optional COCO instance annotations."""

    def __init__(self, images_dir: str | Path, image_size: int, annotations: str | Path | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.root = Path(images_dir)
        if not self.root.is_dir():
            raise ValueError(f"images must be a directory, got {self.root}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {self.root}")
        self.image_size = image_size
        self.max_pixels = max_pixels
        self._coco = None
        self._image_ids: dict[str, int] = {}
        if annotations is not None:
            self._load_coco(Path(annotations))

    def _load_coco(self, path: Path) -> None:
        from pycocotools.coco import COCO

        if not path.is_file():
            raise ValueError(f"annotations must be a COCO instances JSON file, got {path}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self._coco = COCO(str(path))
        by_name = {Path(img["file_name"]).as_posix(): img["id"] for img in self._coco.dataset.get("images", [])}
        for f in self.files:
            rel = f.relative_to(self.root).as_posix()
            image_id = by_name.get(rel, by_name.get(f.name))
            if image_id is not None:
                self._image_ids[rel] = image_id
        logger.info("%d of %d images have COCO annotations in %s", len(self._image_ids), len(self.files), path)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> DistillSample:
        path = self.files[index]
        data = path.read_bytes()
        rgb = load_image(data, self.max_pixels)
        image, input_size = preprocess_image(rgb, self.image_size)
        size = self.image_size // 4
        gts = []
        rel = path.relative_to(self.root).as_posix()
        if self._coco is not None and rel in self._image_ids:
            info = self._coco.imgs[self._image_ids[rel]]
            if (info["height"], info["width"]) != rgb.shape[:2]:
                raise ValueError(f"{rel}: COCO says {info['height']}x{info['width']} (HxW), the file is "
                                 f"{rgb.shape[0]}x{rgb.shape[1]}")
            for ann in self._coco.loadAnns(self._coco.getAnnIds(imgIds=[info["id"]], iscrowd=False)):
                low = mask_to_low_res(self._coco.annToMask(ann).astype(bool), self.image_size)
                if low.any():
                    gts.append(low)
        gt = torch.stack(gts) if gts else torch.zeros((0, size, size), dtype=torch.bool)
        key = hashlib.sha256(data).hexdigest()[:32]
        return DistillSample(index, key, image, valid_region(input_size, self.image_size), gt)
