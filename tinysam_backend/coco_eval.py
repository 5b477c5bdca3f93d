"""Zero-shot instance segmentation on a COCO-format set, the paper's protocol.

A detector's boxes (COCO results JSON: image_id, category_id, bbox [x, y, w, h] pixels, score) are the
prompts; for each box the best of TinySAM's three masks by predicted IoU is kept with the detector's
category and score; mask AP is computed with pycocotools' COCOeval ("segm").

`tinysam eval-coco --images DIR --annotations instances.json --boxes detections.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import Settings
from .engines import add_engine_arguments, engine_options
from .errors import TinySAMError
from .masks import DEFAULT_PROMPTS_PER_BATCH

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_detections(path_or_list, min_score: float = 0.0) -> dict[int, list[dict]]:
    """COCO results JSON (a file or the parsed list) → {image_id: [detection, …]}, score ≥ min_score."""
    if isinstance(path_or_list, (str, Path)):
        data = json.loads(Path(path_or_list).read_text())
    else:
        data = path_or_list
    if not isinstance(data, list):
        raise TinySAMError(f"detections must be a JSON list of COCO results, got {type(data).__name__}")
    by_image: dict[int, list[dict]] = defaultdict(list)
    for i, det in enumerate(data):
        missing = [k for k in ("image_id", "category_id", "bbox") if k not in det]
        if missing:
            raise TinySAMError(f"detection {i} lacks {missing}; expected image_id, category_id, bbox [x, y, w, h]")
        bbox = det["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise TinySAMError(f"detection {i}: bbox must be [x, y, w, h], got {bbox!r}")
        score = float(det.get("score", 1.0))
        if score >= min_score:
            by_image[int(det["image_id"])].append({"image_id": int(det["image_id"]),
                                                   "category_id": int(det["category_id"]),
                                                   "bbox": [float(v) for v in bbox], "score": score})
    return dict(by_image)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [x, y, w, h] → (N, 4) [x0, y0, x1, y1]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def segment_detections(predictor, image, detections: Sequence[dict], *,
                       boxes_per_batch: int = DEFAULT_PROMPTS_PER_BATCH) -> list[dict]:
    """Box prompts of one image → COCO results with `segmentation` (compressed RLE, counts str).

    Each result keeps the detection's image_id, category_id and score, and adds `predicted_iou` (the best of
    the three masks, chosen by predicted IoU).
    """
    from .masks import best_masks_for_prompts, encode_rle

    if not detections:
        return []
    emb = predictor.embed(image)
    masks, scores = best_masks_for_prompts(predictor, emb, boxes=xywh_to_xyxy([d["bbox"] for d in detections]),
                                           prompts_per_batch=boxes_per_batch)
    return [{"image_id": det["image_id"], "category_id": det["category_id"], "segmentation": rle,
             "score": det["score"], "predicted_iou": float(score)}
            for det, rle, score in zip(detections, encode_rle(masks), scores)]


def mask_ap(coco_gt, results: list[dict], image_ids: Sequence[int] | None = None) -> dict:
    """COCOeval "segm" of results against a pycocotools COCO ground truth → {stat name: value}.

    Stats are COCO's twelve (AP over IoU 0.50:0.95, AP50, AP75, by size, AR…); -1 where COCO has nothing to
    average. Only `image_ids` are evaluated when given. No results at all gives AP 0 (not an error).
    """
    from pycocotools.cocoeval import COCOeval

    ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # pycocotools prints its progress and table
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.info("COCOeval segm:\n%s", buf.getvalue())
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def evaluate_coco(images_dir, annotations, boxes, *, checkpoint=None, predictor=None, max_images: int | None = None,
                  min_score: float = 0.0, boxes_per_batch: int = DEFAULT_PROMPTS_PER_BATCH,
                  results_out=None, show_progress: bool = True, settings: Settings | None = None) -> dict:
    """Run the protocol over a COCO-format set: returns {"stats": {...}, "images": n, "detections": n}.

    images_dir holds the images named by the annotations' `file_name`; annotations: instances JSON path;
    boxes: COCO results JSON (path or list). max_images: evaluate only the first n images (by id) that have
    ground truth. results_out: also write the mask results (COCO results JSON) there. Without `predictor`, the
    model is loaded from `checkpoint` with `settings` (None: `Settings()`; a checkpoint of None is
    `settings.checkpoint`).
    """
    from pycocotools.coco import COCO
    from tqdm import tqdm

    from .config import DEFAULT_MAX_IMAGE_PIXELS
    from .image_io import load_image

    images_dir = Path(images_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(annotations))
    dets = load_detections(boxes, min_score)
    image_ids = sorted(coco_gt.getImgIds())
    if max_images is not None:
        if max_images < 1:
            raise TinySAMError(f"max_images must be >= 1, got {max_images}")
        image_ids = image_ids[:max_images]
    unknown = sorted(set(dets) - set(coco_gt.getImgIds()))
    if unknown:
        raise TinySAMError(f"detections name image ids absent from the annotations: {unknown[:10]}")
    if predictor is None:
        from .checkpoint import load_model
        from .predictor import Predictor

        settings = settings or Settings()
        predictor = Predictor(load_model(checkpoint, settings=settings), settings.max_image_pixels)
    results: list[dict] = []
    n_dets = 0
    for image_id in tqdm(image_ids, desc="eval-coco", unit="img", disable=not show_progress):
        image_dets = dets.get(image_id, [])
        if not image_dets:
            continue
        info = coco_gt.loadImgs(image_id)[0]
        image = load_image(images_dir / info["file_name"],
                           getattr(predictor, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        if image.shape[:2] != (info["height"], info["width"]):
            raise TinySAMError(f"image {info['file_name']} is {image.shape[1]}x{image.shape[0]}, the annotations "
                               f"say {info['width']}x{info['height']}")
        results.extend(segment_detections(predictor, image, image_dets, boxes_per_batch=boxes_per_batch))
        n_dets += len(image_dets)
    if results_out is not None:
        Path(results_out).write_text(json.dumps(results))
    stats = mask_ap(coco_gt, results, image_ids)
    return {"stats": stats, "images": len(image_ids), "detections": n_dets}


def cmd_eval_coco(args: argparse.Namespace, settings: Settings) -> int:
    settings = dataclasses.replace(settings, **engine_options(args))  # --device/--engine/--precision over the env
    out = evaluate_coco(args.images, args.annotations, args.boxes, checkpoint=args.checkpoint,
                        max_images=args.max_images, min_score=args.min_score, boxes_per_batch=args.boxes_per_batch,
                        results_out=args.results_out, settings=settings)
    for name, value in out["stats"].items():
        print(f"{name:6s} {value:.4f}")
    print(f"images {out['images']}  detections {out['detections']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """`tinysam eval-coco`: zero-shot instance segmentation (detector boxes as prompts) → mask AP."""
    p = subparsers.add_parser("eval-coco", help="zero-shot instance segmentation mask AP on a COCO-format set")
    p.add_argument("--images", required=True, help="directory of the images (annotations' file_name)")
    p.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth with masks)")
    p.add_argument("--boxes", required=True, help="detector boxes, COCO results JSON (image_id, category_id, "
                                                  "bbox [x,y,w,h], score)")
    p.add_argument("--checkpoint", help="state dict or quantized dir (default: TINYSAM_CHECKPOINT)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images (by id)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop detections scored below this")
    p.add_argument("--boxes-per-batch", type=int, default=DEFAULT_PROMPTS_PER_BATCH, help="box prompts decoded at once")
    p.add_argument("--results-out", help="write the mask results (COCO results JSON) here")
    p.add_argument("--json", help="write the stats as JSON here")
    add_engine_arguments(p)
    p.set_defaults(func=cmd_eval_coco)
