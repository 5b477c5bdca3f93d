"""Full-stage knowledge distillation with online hard prompt sampling (TinySAM §3.2).

A training package apart from the serving path (serving never imports it). Python API:

    from tinysam_backend.distillation import DistillConfig, distill
    last = distill(DistillConfig(images="imgs/", out="run/", teacher="sam_vit_h.pth", student_init=None))

CLI: `tinysam distill --teacher CKPT --student-init CKPT|scratch --images DIR [--annotations COCO.json] --out DIR`;
multi-process: `torchrun --nproc_per_node=N -m tinysam_backend.distillation ...` (same arguments).
"""

from .hard_prompt_sampler import Prompts, hard_prompt_sampler, sample_error_points
from .trainer import DistillConfig, LossWeights, distill, evaluate_agreement, rounds_of_step, save_student

__all__ = ["DistillConfig", "LossWeights", "Prompts", "distill", "evaluate_agreement", "hard_prompt_sampler",
           "rounds_of_step", "sample_error_points", "save_student"]
