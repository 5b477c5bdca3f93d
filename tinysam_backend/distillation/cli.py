"""`tinysam distill`: the command-line front of `tinysam_backend.distillation.distill`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint (SAM ViT-B/L/H or TinySAM state dict)")
    p.add_argument("--student-init", required=True, metavar="CKPT|scratch",
                   help="student start: a TinySAM checkpoint, or `scratch` for random initialisation")
    p.add_argument("--images", required=True, help="directory of training images (searched recursively)")
    p.add_argument("--annotations", help="COCO instances JSON with ground-truth masks (optional)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics.jsonl, teacher cache)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-images", type=int, default=1, help="images per step per process")
    p.add_argument("--prompts-per-image", type=int, default=64)
    p.add_argument("--max-rounds", type=int, default=9, help="hard prompt sampling rounds drawn from 0..N")
    p.add_argument("--box-probability", type=float, default=0.5, help="chance a step starts from boxes")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    for term in ("embedding", "tokens", "mask-output", "gt-mask", "iou"):
        p.add_argument(f"--w-{term}", type=float, default=1.0, help=f"weight of the {term} loss term")
    bn = p.add_mutually_exclusive_group()
    bn.add_argument("--freeze-batchnorm", dest="freeze_batchnorm", action="store_true", default=None,
                    help="keep BatchNorm statistics frozen (default when starting from a checkpoint)")
    bn.add_argument("--train-batchnorm", dest="freeze_batchnorm", action="store_false",
                    help="update BatchNorm statistics (default from scratch)")
    p.add_argument("--teacher-variant", help="teacher variant (default: detected from the checkpoint)")
    p.add_argument("--student-variant", default="vit_t")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="write student_step<N>.pth every N steps")
    p.add_argument("--teacher-cache", help="directory for cached teacher embeddings (default OUT/teacher_embeddings)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/trainer_state.pt if present")
    p.add_argument("--stop-at", type=int, help="end this invocation after global step N (checkpoint written); "
                   "continue later with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")


def config_from_args(args: argparse.Namespace, settings: Settings | None = None):
    from ..checkpoint import resolve_checkpoint
    from .trainer import DistillConfig, LossWeights

    settings = settings or Settings()
    opt = (lambda v: Path(v) if v else None)
    # Checkpoint names are found here, in the configured cache (`tinysam weights fetch`), not by the trainer.
    return DistillConfig(
        images=Path(args.images), out=Path(args.out), teacher=resolve_checkpoint(args.teacher, settings),
        student_init=None if args.student_init == "scratch" else resolve_checkpoint(args.student_init, settings),
        annotations=opt(args.annotations), teacher_variant=args.teacher_variant,
        student_variant=args.student_variant, steps=args.steps, batch_images=args.batch_images,
        prompts_per_image=args.prompts_per_image, max_rounds=args.max_rounds,
        box_probability=args.box_probability, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
        weights=LossWeights(args.w_embedding, args.w_tokens, args.w_mask_output, args.w_gt_mask, args.w_iou),
        freeze_batchnorm=args.freeze_batchnorm, seed=args.seed, save_every=args.save_every,
        teacher_cache=opt(args.teacher_cache), resume=args.resume, stop_at=args.stop_at, progress=not args.no_progress,
        device=args.device, max_image_pixels=settings.max_image_pixels)


def cmd_distill(args: argparse.Namespace, settings: Settings) -> int:
    import torch.distributed as dist

    from .trainer import distill

    last = distill(config_from_args(args, settings))
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({"checkpoint": str(last), "metrics": str(Path(args.out) / "metrics.jsonl")}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distill TinySAM from a bigger SAM teacher (full-stage, hard prompts)",
                              description="Full-stage knowledge distillation with online hard prompt sampling. "
                                          "Multi-process: torchrun --nproc_per_node=N -m tinysam_backend.distillation "
                                          "ARGS (same arguments).")
    add_arguments(p)
    p.set_defaults(func=cmd_distill)
