"""Synthetic images with COCO instance annotations (ellipses and rectangles on a textured background)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def make_synthetic_dataset(root: Path, n: int = 6, size: tuple[int, int] = (192, 256), seed: int = 0,
                           shapes: int = 3) -> tuple[Path, Path]:
    """Write n PNGs (H×W = size) under root/images and root/instances.json; returns (images dir, json path)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    ann_id = 1
    for i in range(n):
        base = rng.integers(0, 256, 3)
        img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255)
        for _ in range(shapes):
            cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
            ry, rx = rng.uniform(0.08, 0.25) * h, rng.uniform(0.08, 0.25) * w
            if rng.random() < 0.5:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            img[m] = rng.integers(0, 256, 3)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            rle["counts"] = rle["counts"].decode()
            coco["annotations"].append({"id": ann_id, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                                        "area": float(m.sum()), "bbox": bbox, "iscrowd": 0})
            ann_id += 1
        name = f"img_{i:03d}.png"
        Image.fromarray(img.astype(np.uint8)).save(images_dir / name)
        coco["images"].append({"id": i + 1, "file_name": name, "height": h, "width": w})
    ann_path = root / "instances.json"
    ann_path.write_text(json.dumps(coco))
    return images_dir, ann_path
