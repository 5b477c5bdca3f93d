"""A FiftyOne dataset to look at: scikit-image's coins with ground-truth instance masks, TinySAM's auto-masks
and box-prompted masks, their evaluation, and a PNG of one sample (auto-masks | ground truth).

    python scripts/fiftyone_demo.py --checkpoint tinysam_42.3.pth --out fiftyone_preview.png
    # random-weight parity model (noisy masks; the filters must be permissive):
    python scripts/fiftyone_demo.py --checkpoint ../shared/parity/tinysam_random_weights.pth \
        --pred-iou-thresh 0.06 --stability-score-thresh 0 --high-score-thresh 0.12 --out fiftyone_preview.png

The dataset (`tinysam-demo`, persistent) stays for the App (`fiftyone app launch`), and the same PNG can be
written again with `tinysam fo-preview --dataset tinysam-demo --pred auto --gt ground_truth --out x.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def coins_with_ground_truth():
    """skimage.data.coins() as RGB, and one mask per coin (Otsu threshold, connected components)."""
    import skimage.data
    import skimage.filters
    import skimage.measure

    gray = skimage.data.coins()
    fg = gray > skimage.filters.threshold_otsu(gray)
    regions = skimage.measure.label(fg)
    masks = [regions == k for k in range(1, regions.max() + 1)]
    # coins are compact blobs; the bright background strip along the top edge is not one
    masks = [m for m in masks if m.sum() >= 300 and not m[0].any()]
    return np.stack([gray] * 3, -1), masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="state dict or quantized dir (default: TINYSAM_CHECKPOINT)")
    parser.add_argument("--out", default="fiftyone_preview.png", help="PNG to write")
    parser.add_argument("--image-dir", default="fiftyone_demo_images", help="where the demo image is written")
    parser.add_argument("--dataset", default="tinysam-demo")
    from tinysam_backend.everything import EverythingParams

    shown = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "high_score_thresh", "box_nms_thresh")
    for p in EverythingParams.parameters():  # the library's names, defaults and help (one source)
        if p.name in shown:
            parser.add_argument(p.flag, type=p.kind, default=p.default, help=p.help)
    args = parser.parse_args()

    import fiftyone as fo
    from PIL import Image

    from tinysam_backend import Predictor, Settings, load_model
    from tinysam_backend.fiftyone_adapter import (
        auto_mask,
        evaluate_masks,
        mask_from_boxes,
        mask_to_box_and_crop,
        preview_sample,
    )

    image, masks = coins_with_ground_truth()
    image_dir = Path(args.image_dir).resolve()
    image_dir.mkdir(parents=True, exist_ok=True)
    path = image_dir / "coins.png"
    Image.fromarray(image).save(path)

    if fo.dataset_exists(args.dataset):
        fo.delete_dataset(args.dataset)
    ds = fo.Dataset(args.dataset, persistent=True)
    gt, boxes = [], []
    for m in masks:
        box, crop = mask_to_box_and_crop(m)
        gt.append(fo.Detection(label="coin", bounding_box=box, mask=crop))
        boxes.append(fo.Detection(label="coin", bounding_box=box, confidence=1.0))
    ds.add_sample(fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=gt),
                            boxes=fo.Detections(detections=boxes)))
    ds.compute_metadata()

    settings = Settings.from_env()
    predictor = Predictor(load_model(args.checkpoint, settings=settings), settings.max_image_pixels)
    everything = {name: getattr(args, name) for name in shown}
    report = {"auto_mask": auto_mask(ds, "auto", predictor=predictor, **everything),
              "mask_from_boxes": mask_from_boxes(ds, "boxes", "box_masks", predictor=predictor)}
    report["evaluate auto"] = evaluate_masks(ds, "auto", "ground_truth", "eval_auto")
    report["evaluate boxes"] = evaluate_masks(ds, "box_masks", "ground_truth", "eval_boxes", compute_mAP=True)
    out = Path(args.out)
    preview_sample(ds.first(), "auto", "ground_truth").save(out)
    print(json.dumps(report, indent=2))
    print(f"wrote {out}; dataset {args.dataset!r} kept (fiftyone app launch)")


if __name__ == "__main__":
    main()
