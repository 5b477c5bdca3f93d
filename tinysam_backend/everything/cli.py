"""`tinysam everything IMAGE --mode hierarchical|dense --out DIR`: masks.json (COCO RLE) and overlay.png."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from ..config import Settings
from ..engines import add_engine_arguments
from .params import EverythingParams


def add_everything_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `EverythingParams` field (`--points-per-side` …), with its default, kind and help."""
    for p in EverythingParams.parameters():
        kind = {"choices": p.choices} if p.choices is not None else {"type": p.kind}
        parser.add_argument(p.flag, default=p.default, help=f"{p.help} (default: {p.default})", **kind)


def everything_params_from_args(args: argparse.Namespace) -> EverythingParams:
    """The `EverythingParams` of parsed `add_everything_arguments` flags (ValueError when out of range)."""
    return EverythingParams(**{p.name: getattr(args, p.name) for p in EverythingParams.parameters()})


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("everything", help="segment everything in one image (TinySAM hierarchical or dense)")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="output directory (masks.json, overlay.png)")
    p.add_argument("--checkpoint", help="state dict or quantized dir (default: TINYSAM_CHECKPOINT)")
    p.add_argument("--variant", help="model variant when it cannot be detected from the checkpoint keys")
    add_everything_arguments(p)
    add_engine_arguments(p)
    p.set_defaults(func=cmd_everything)


def _json_number(x: float):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def cmd_everything(args: argparse.Namespace, settings: Settings) -> int:
    from .. import Predictor, load_image, load_model
    from ..engines import engine_options
    from ..errors import TinySAMError
    from ..masks import decode_rle
    from ..visualize import overlay_masks
    from .generator import run_everything

    try:
        params = everything_params_from_args(args)
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
