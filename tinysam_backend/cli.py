"""`tinysam` command line. Subcommands of other parts register through `register_cli(subparsers)`; every
subcommand's function is `func(args, settings) -> int`, with the `Settings` read once here."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from .config import Settings
from .engines import add_engine_arguments
from .errors import TinySAMError

# Modules that add subcommands (imported only when the CLI runs).
SUBCOMMAND_MODULES = [
    "tinysam_backend.everything.cli",
    "tinysam_backend.quantization.cli",
    "tinysam_backend.distillation.cli",
    "tinysam_backend.label_studio.cli",
    "tinysam_backend.coco_eval",
    "tinysam_backend.fiftyone_adapter",
]


def _parse_point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,LABEL, got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected numbers in X,Y[,LABEL], got {text!r}") from e
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"LABEL must be 1 (foreground) or 0 (background), got {label}")
    return x, y, label


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 numbers, got {text!r}") from e
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1, got {text!r}")
    return vals  # type: ignore[return-value]


def cmd_segment(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np
    from PIL import Image

    from . import Predictor, load_image, load_model
    from .engines import engine_options
    from .visualize import overlay_masks

    if not args.point and args.box is None:
        raise TinySAMError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    image = load_image(args.image, settings.max_image_pixels)
    predictor = Predictor(load_model(args.checkpoint, settings=settings, **engine_options(args)),
                          settings.max_image_pixels)
    emb = predictor.embed(image)
    coords = labels = None
    if args.point:
        coords = np.array([p[:2] for p in args.point], dtype=np.float64)
        labels = np.array([p[2] for p in args.point], dtype=np.int64)
    masks, scores, _ = predictor.predict(emb, coords, labels, box=args.box)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best = int(np.argmax(scores))
    files = []
    for i, m in enumerate(masks):
        name = f"mask_{i}.png"
        Image.fromarray(m.astype(np.uint8) * 255).save(out / name)
        files.append(name)
    overlay_masks(image, [masks[best]], points=coords, point_labels=labels,
                  boxes=None if args.box is None else [args.box]).save(out / "overlay.png")
    result = {"image": str(args.image), "size": list(image.shape[:2]), "scores": [float(s) for s in scores],
              "best": best, "masks": files, "areas": [int(m.sum()) for m in masks], "overlay": "overlay.png",
              "prompt": {"points": None if coords is None else coords.tolist(),
                         "labels": None if labels is None else labels.tolist(), "box": args.box}}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"out": str(out), "scores": result["scores"], "best": best}))
    return 0


def cmd_weights(args: argparse.Namespace, settings: Settings) -> int:
    from .weights import fetch, lookup, read_manifest

    if args.weights_cmd == "list":
        for entry in read_manifest().values():
            cached = (settings.cache_dir / entry.file).exists()
            print(f"{entry.name:14s} {entry.variant:6s} {'cached' if cached else '      '} {entry.url}")
        return 0
    path = fetch(lookup(args.name), settings.cache_dir, sha256=args.sha256, force=args.force)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinysam", description="TinySAM: segment, serve, quantize, distill.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="masks for point/box prompts on one image")
    seg.add_argument("image")
    seg.add_argument("--point", action="append", type=_parse_point, default=[], metavar="X,Y[,LABEL]",
                     help="prompt point in original pixels; LABEL 1 = foreground (default), 0 = background")
    seg.add_argument("--box", type=_parse_box, metavar="X0,Y0,X1,Y1")
    seg.add_argument("--checkpoint", help="state dict or quantized dir (default: TINYSAM_CHECKPOINT)")
    seg.add_argument("--out", required=True, help="output directory")
    add_engine_arguments(seg)
    seg.set_defaults(func=cmd_segment)

    w = sub.add_parser("weights", help="official checkpoints: list or download")
    wsub = w.add_subparsers(dest="weights_cmd", required=True)
    wsub.add_parser("list")
    f = wsub.add_parser("fetch")
    f.add_argument("name", help="a name from `tinysam weights list`, e.g. tinysam_42.3")
    f.add_argument("--sha256", help="expected SHA-256; refuse anything else")
    f.add_argument("--force", action="store_true", help="download again even if present")
    w.set_defaults(func=cmd_weights)

    for module in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module or module.startswith(e.name + ".")):
                continue  # part not installed in this checkout
            raise
        register = getattr(mod, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real process (the `tinysam` command), not a call from Python: tune malloc first
        from .allocator import reexec_with_tuned_allocator

        reexec_with_tuned_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        return int(args.func(args, settings) or 0)
    except TinySAMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
