"""FiftyOne subcommands: `tinysam fo-preview` (PNG of one sample, TinySAM masks beside the ground truth) and
`tinysam fo-workers` (delegated workers with TinySAM's malloc settings, `workers.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Settings
from .preview import preview_sample


def cmd_fo_preview(args: argparse.Namespace, settings: Settings) -> int:
    import fiftyone as fo

    dataset = fo.load_dataset(args.dataset)
    if args.sample_id:
        sample = dataset[args.sample_id]
    else:
        if not 0 <= args.index < len(dataset):
            raise IndexError(f"--index must be in [0, {len(dataset)}), got {args.index}")
        sample = dataset.skip(args.index).first()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_sample(sample, args.pred, args.gt, max_image_pixels=settings.max_image_pixels).save(out)
    print(out)
    return 0


def register_cli(subparsers) -> None:
    """`tinysam fo-preview`: PNG of one sample with its TinySAM masks beside its ground truth."""
    p = subparsers.add_parser("fo-preview", help="PNG of a FiftyOne sample: predicted masks | ground truth")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--pred", required=True, help="Detections field with the predicted instance masks")
    p.add_argument("--gt", help="Detections field with ground-truth instance masks")
    p.add_argument("--sample-id", help="sample id (default: the sample at --index)")
    p.add_argument("--index", type=int, default=0, help="position of the sample in the dataset (default 0)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.set_defaults(func=cmd_fo_preview)

    from .workers import register_cli as register_workers

    register_workers(subparsers)
