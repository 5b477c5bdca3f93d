"""One real-size distillation step on the machine it runs on: TinySAM student (parity checkpoint) and a teacher.

    python benchmarks/distill_step.py [--checkpoint PATH] [--teacher vit_t|vit_b] [--prompts 64] [--threads 2]

The student starts from the parity checkpoint (random weights in the official layout: times exactly like
the real one). The teacher is the same checkpoint (`vit_t`, default) or a random SAM ViT-B (`vit_b`). One
synthetic 1024×768 image. Runs, side by side in one process: the teacher encode that fills the cache, a
step with 0 hard-prompt rounds (max_rounds=0) and a step with 9 rounds (the paper's worst case); prints
seconds and ratios. The first step of each run is a warm-up; the timed step is the second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "parity" / "tinysam_random_weights.pth"


def _step_seconds(images: Path, out: Path, teacher, checkpoint: Path, prompts: int, rounds: int, cache: Path,
                  device: str) -> tuple[float, dict]:
    from tinysam_backend.distillation import DistillConfig, distill

    cfg = DistillConfig(images=images, out=out, student_init=checkpoint, steps=2, prompts_per_image=prompts,
                        max_rounds=rounds, box_probability=0.0, progress=False, teacher_cache=cache, device=device)
    # max_rounds=R draws 0..R per step; for the R-round timing, seek a seed whose second step draws R.
    seed = _seed_with_rounds(cfg, rounds, device)
    cfg = DistillConfig(**{**cfg.__dict__, "seed": seed})
    distill(cfg, teacher=teacher)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["seconds"], rows[-1]


def _seed_with_rounds(cfg, rounds: int, device: str) -> int:
    from tinysam_backend.distillation import rounds_of_step

    for seed in range(10_000):
        if rounds_of_step(cfg.__class__(**{**cfg.__dict__, "seed": seed}), 1, 0, device) == rounds:
            return seed
    raise RuntimeError(f"no seed draws {rounds} rounds")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--teacher", choices=("vit_t", "vit_b"), default="vit_t")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tinysam_backend.checkpoint import load_model
    from tinysam_backend.modeling import build_sam

    if not args.checkpoint.is_file():
        print(f"checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    if args.teacher == "vit_t":
        teacher = load_model(args.checkpoint)
    else:
        torch.manual_seed(0)
        teacher = build_sam("vit_b")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)).save(tmp / "images" / "a.png")
        from tinysam_backend.distillation.data import ImageFolderDataset
        from tinysam_backend.distillation.teacher_cache import TeacherEmbeddingCache

        teacher = teacher.to(args.device).eval()
        cache = TeacherEmbeddingCache(tmp / "cache", teacher)
        t = time.perf_counter()
        cache.fill(ImageFolderDataset(tmp / "images", teacher.image_size))
        encode_s = time.perf_counter() - t
        s0, _ = _step_seconds(tmp / "images", tmp / "r0", teacher, args.checkpoint, args.prompts, 0, tmp / "cache",
                              args.device)
        s9, row9 = _step_seconds(tmp / "images", tmp / "r9", teacher, args.checkpoint, args.prompts, 9,
                                 tmp / "cache", args.device)
    print(f"device {args.device}, threads {torch.get_num_threads()}, teacher {args.teacher}, "
          f"student vit_t, {args.prompts} prompts/image, 1 image/step")
    print(f"teacher encode (once per image, cached): {encode_s:.2f} s")
    print(f"step, 0 hard-prompt rounds: {s0:.2f} s  ({s0 / encode_s:.2f}x teacher encode)")
    print(f"step, 9 hard-prompt rounds: {s9:.2f} s  ({s9 / s0:.2f}x the 0-round step; rounds logged: "
          f"{int(row9['rounds'])})")
    print(f"steps/s: {1 / s0:.3f} (0 rounds), {1 / s9:.3f} (9 rounds)")
    return 0


if __name__ == "__main__":
    from tinysam_backend.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()  # the malloc settings `tinysam` commands run with
    sys.exit(main())
