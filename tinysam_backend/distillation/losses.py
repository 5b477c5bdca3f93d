"""Loss terms of full-stage distillation (TinySAM §3.2) and the hard-mask weight.

Shapes: image embeddings (B, C, h, w); decoder output tokens (P, 1 + 4 + K, C); mask logits (P, 3, L, L)
at the decoder's low resolution (L = 4·h; 256 for a 1024 model); targets (P, L, L) bool; predicted IoU
(P, 3). P is the number of prompts in the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks import MASK_THRESHOLD


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 between student and teacher image embeddings (mean over all elements)."""
    return F.l1_loss(student, teacher)


def token_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 between the two-way transformer's output tokens of student and teacher."""
    return F.l1_loss(student, teacher)


def mask_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of boolean masks over the last two dims: (..., L, L) × (..., L, L) → (...). Two empty masks → 1."""
    a, b = a.bool(), b.bool()
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(eps), torch.ones_like(union))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask: logits and target (..., L, L) → (...), mean over pixels."""
    target = target.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: (..., L, L) → (...)."""
    prob = logits.sigmoid().flatten(-2)
    target = target.to(logits.dtype).flatten(-2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + smooth) / (prob.sum(-1) + target.sum(-1) + smooth)


def hard_mask_weight(teacher_masks: torch.Tensor, student_masks: torch.Tensor, gt: torch.Tensor,
                     eps: float = 1e-6) -> torch.Tensor:
    """H = sigmoid(IoU(M_teacher, GT) / (IoU(M_student, GT) + eps) − 1), one weight per prompt.

    Masks (P, L, L) bool. A prompt where the student trails the teacher gets H > 0.5, one where it matches
    gets 0.5; the weight carries no gradient.
    """
    iou_t = mask_iou(teacher_masks, gt)
    iou_s = mask_iou(student_masks, gt)
    return torch.sigmoid(iou_t / (iou_s + eps) - 1).detach()


def mask_output_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Output-mask distillation: focal + dice of each student mask against the teacher's binary mask.

    student_logits, teacher_logits (P, 3, L, L); weight (P,) per-prompt hard-mask weight or None (= 1).
    """
    target = teacher_logits > MASK_THRESHOLD
    per_mask = 20.0 * focal_loss(student_logits, target) + dice_loss(student_logits, target)  # (P, 3)
    per_prompt = per_mask.mean(-1)
    if weight is not None:
        per_prompt = per_prompt * weight
    return per_prompt.mean()


def gt_mask_loss(student_logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Focal + dice (20:1, as SAM) to ground truth, back-propagated through the best of the 3 masks only."""
    target = gt[:, None].expand_as(student_logits)
    per_mask = 20.0 * focal_loss(student_logits, target) + dice_loss(student_logits, target)  # (P, 3)
    return per_mask.min(dim=-1).values.mean()


def iou_head_loss(iou_pred: torch.Tensor, student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the IoU head's predictions (P, 3) and the real IoU of each student mask with `target` (P, L, L)."""
    with torch.no_grad():
        real = mask_iou(student_logits > MASK_THRESHOLD, target[:, None].expand_as(student_logits))
    return F.mse_loss(iou_pred, real)
