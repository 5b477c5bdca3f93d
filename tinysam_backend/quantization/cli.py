"""`tinysam quantize` (W8A8 int8 artifact) and `tinysam export-onnx` (fp32 ONNX graphs)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def cmd_quantize(args: argparse.Namespace, settings) -> int:
    from ..checkpoint import load_torch_model
    from ..image_io import load_image
    from .artifact import quantize_model
    from .calibrate import CalibrationConfig
    from .calibration_data import DEFAULT_CALIBRATION_IMAGES, calibration_image_paths, default_calibration_images

    sam = load_torch_model(args.checkpoint, settings=settings)
    if args.calib:
        paths = calibration_image_paths(args.calib, args.num_images)
        images = [load_image(p, settings.max_image_pixels) for p in paths]
        names = [str(p) for p in paths]
    else:
        images = default_calibration_images()[: args.num_images]
        names = [f"skimage.data.{n}" for n in DEFAULT_CALIBRATION_IMAGES[: args.num_images]]
    cfg = CalibrationConfig(candidates=args.candidates, rounds=args.rounds, rows_per_image=args.rows_per_image,
                            seed=args.seed)
    t0 = time.perf_counter()
    out = quantize_model(sam, images, args.out, cfg, names)
    print(json.dumps({"out": str(out), "calibration_images": len(images), "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def cmd_export_onnx(args: argparse.Namespace, settings) -> int:
    from ..checkpoint import load_torch_model
    from .export import export_onnx

    sam = load_torch_model(args.checkpoint, settings=settings)
    enc, dec = export_onnx(sam, args.out)
    print(json.dumps({"out": str(Path(args.out)), "encoder": enc.name, "decoder": dec.name}))
    return 0


def register_cli(subparsers) -> None:
    from .calibrate import CalibrationConfig

    q = subparsers.add_parser("quantize", help="W8A8 int8 ONNX artifact (load it with --checkpoint DIR)")
    q.add_argument("--checkpoint", help="fp32 state dict (default: TINYSAM_CHECKPOINT)")
    q.add_argument("--calib", nargs="+", metavar="DIR_OR_FILE",
                   help="calibration images or directories (default: scikit-image's bundled sample photos)")
    q.add_argument("--out", required=True, help="output directory (ONNX graphs + quantization.json)")
    q.add_argument("--num-images", type=int, default=8, help="calibration images used (default 8, as the paper)")
    q.add_argument("--candidates", type=int, default=CalibrationConfig.candidates, help="scale candidates per search (default 100)")
    q.add_argument("--rounds", type=int, default=CalibrationConfig.rounds,
                   help=f"alternating search rounds (default {CalibrationConfig.rounds}; 0 = plain max-abs scales)")
    q.add_argument("--rows-per-image", type=int, default=CalibrationConfig.rows_per_image,
                   help="sampled positions per layer and image")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_quantize)

    e = subparsers.add_parser("export-onnx", help="fp32 ONNX graphs of the encoder and the prompt decoder")
    e.add_argument("--checkpoint", help="fp32 state dict (default: TINYSAM_CHECKPOINT)")
    e.add_argument("--out", required=True, help="output directory")
    e.set_defaults(func=cmd_export_onnx)
