"""`tinysam everything IMAGE --mode hierarchical|dense --out DIR`: masks.json (COCO RLE) and overlay.png."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from ..engines import add_engine_arguments
from .generator import DECODERS, MODES, EverythingParams

_DEFAULTS = EverythingParams()


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("everything", help="segment everything in one image (TinySAM hierarchical or dense)")
    p.add_argument("image")
    p.add_argument("--mode", choices=MODES, default=_DEFAULTS.mode)
    p.add_argument("--out", required=True, help="output directory (masks.json, overlay.png)")
    p.add_argument("--checkpoint", help="state dict or quantized dir (default: TINYSAM_CHECKPOINT)")
    p.add_argument("--variant", help="model variant when it cannot be detected from the checkpoint keys")
    p.add_argument("--points-per-side", type=int, default=_DEFAULTS.points_per_side)
    p.add_argument("--pred-iou-thresh", type=float, default=_DEFAULTS.pred_iou_thresh)
    p.add_argument("--stability-score-thresh", type=float, default=_DEFAULTS.stability_score_thresh)
    p.add_argument("--high-score-thresh", type=float, default=_DEFAULTS.high_score_thresh)
    p.add_argument("--box-nms-thresh", type=float, default=_DEFAULTS.box_nms_thresh)
    p.add_argument("--min-mask-region-area", type=int, default=_DEFAULTS.min_mask_region_area)
    p.add_argument("--points-per-batch", type=int, default=_DEFAULTS.points_per_batch)
    p.add_argument("--decoder", choices=DECODERS, default=_DEFAULTS.decoder,
                   help="fast: low-rank batched decoder (fp32 model); model: model.decode; auto: fast when possible")
    add_engine_arguments(p)
    p.set_defaults(func=cmd_everything)


def _json_number(x: float):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def cmd_everything(args: argparse.Namespace, settings) -> int:
    from .. import Predictor, load_image, load_model
    from ..engines import engine_options
    from ..errors import TinySAMError
    from ..visualize import overlay_masks
    from .generator import run_everything
    from .postprocess import decode_rle

    try:
        params = EverythingParams(mode=args.mode, points_per_side=args.points_per_side,
                                  pred_iou_thresh=args.pred_iou_thresh,
                                  stability_score_thresh=args.stability_score_thresh,
                                  high_score_thresh=args.high_score_thresh, box_nms_thresh=args.box_nms_thresh,
                                  min_mask_region_area=args.min_mask_region_area,
                                  points_per_batch=args.points_per_batch, decoder=args.decoder)
    except ValueError as e:
        raise TinySAMError(str(e)) from e
    image = load_image(args.image, settings.max_image_pixels)
    model = load_model(args.checkpoint, variant=args.variant, settings=settings, **engine_options(args))
    predictor = Predictor(model, settings.max_image_pixels)
    result = run_everything(predictor, image, params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = [{k: _json_number(v) for k, v in r.items()} for r in result.records]
    doc = {"image": str(args.image), "size": list(image.shape[:2]), "params": dataclasses.asdict(params),
           "prompts_per_round": result.prompts_per_round, "num_masks": len(records),
           "timings": result.timings, "annotations": records}
    (out / "masks.json").write_text(json.dumps(doc))
    masks = [decode_rle(r["segmentation"]) for r in result.records]
    overlay_masks(image, masks, outline=True).save(out / "overlay.png")
    print(json.dumps({"out": str(out), "masks": len(records), "prompts": result.num_prompts,
                      "seconds": round(result.timings["total_s"], 3)}))
    return 0
