"""Run under `torchrun --nproc_per_node=2`: distil a tiny student, then each rank saves its own weights.

Each rank starts its student from a different seed; DDP must broadcast rank 0's weights and keep the
ranks identical through every step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tinysam_backend.distillation import DistillConfig, distill
from tinysam_backend.modeling import build_sam


def main(images: str, teacher: str, out: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)
    student = build_sam("tiny_test_t")
    cfg = DistillConfig(images=Path(images), out=Path(out), teacher=Path(teacher), teacher_variant="tiny_test_t",
                        student_variant="tiny_test_t", steps=steps, prompts_per_image=8, max_rounds=3,
                        lr=3e-3, progress=False)
    distill(cfg, student=student)
    torch.save(student.state_dict(), Path(out) / f"rank{rank}.pth")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
