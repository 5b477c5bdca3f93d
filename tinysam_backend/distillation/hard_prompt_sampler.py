"""Online hard prompt sampling (TinySAM §3.2).

Each prompt starts from a point inside its target mask (or the target's box); then, for a random number
of rounds, the student predicts, a new point is drawn from the error region between the student's current
prediction and the target (a false-negative pixel gives a foreground point, a false-positive one a
background point), and the previous low-res logits are fed back as the mask prompt. The prompts that come
out are the ones the student finds hard; teacher and student are then distilled on them.

Frames: targets and predictions live on the decoder's low-res grid (L × L, L = S/4); point and box
coordinates are returned in the model's input frame (S × S pixels), `scale = S / L` input pixels per cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..masks import MASK_THRESHOLD

NOT_A_POINT = -1  # label the prompt encoder ignores (used when a prompt's prediction has no error left)


@dataclass(frozen=True)
class Prompts:
    """A batch of P prompts in the input frame.

    coords (P, N, 2) XY and labels (P, N) (1 foreground, 0 background, -1 ignored) or both None;
    boxes (P, 4) XYXY or None; mask_input (P, 1, L, L) low-res logits or None.
    """

    coords: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    mask_input: torch.Tensor | None = None

    @property
    def points(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.coords is None else (self.coords, self.labels)

    def add_points(self, coords: torch.Tensor, labels: torch.Tensor) -> Prompts:
        """One more point per prompt: coords (P, 2), labels (P,)."""
        coords, labels = coords[:, None], labels[:, None].to(torch.float32)
        if self.coords is not None:
            coords = torch.cat([self.coords, coords], dim=1)
            labels = torch.cat([self.labels, labels], dim=1)
        return replace(self, coords=coords, labels=labels)

    def to(self, device: torch.device | str) -> Prompts:
        return Prompts(*(None if t is None else t.to(device) for t in (self.coords, self.labels, self.boxes,
                                                                      self.mask_input)))


def _cells_to_coords(flat_index: torch.Tensor, size: int, scale: float, generator: torch.Generator | None
                     ) -> torch.Tensor:
    """Flat indices into an L×L grid → XY input-frame coordinates uniformly inside each cell, (P, 2)."""
    row = torch.div(flat_index, size, rounding_mode="floor")
    col = flat_index % size
    jitter = torch.rand((flat_index.shape[0], 2), generator=generator, device=flat_index.device)
    return torch.stack([col + jitter[:, 0], row + jitter[:, 1]], dim=-1).float() * scale


def sample_points_in(region: torch.Tensor, scale: float, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One point drawn uniformly from each region (P, L, L) bool → coords (P, 2) input frame, found (P,) bool."""
    p, size = region.shape[0], region.shape[-1]
    flat = region.reshape(p, -1)
    scores = torch.rand(flat.shape, generator=generator, device=region.device) * flat
    idx = scores.argmax(dim=1)
    found = flat.any(dim=1)
    return _cells_to_coords(idx, size, scale, generator), found


def sample_error_points(prediction: torch.Tensor, target: torch.Tensor, scale: float,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A point from the error region (prediction XOR target) of each prompt.

    prediction, target (P, L, L) bool → coords (P, 2) input frame, labels (P,) long: 1 where the point is a
    false negative (in the target), 0 where it is a false positive, -1 (not a point) where there is no error.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    error = prediction.bool() ^ target.bool()
    coords, found = sample_points_in(error, scale, generator)
    size = target.shape[-1]
    col = (coords[:, 0] / scale).floor().long().clamp(0, size - 1)
    row = (coords[:, 1] / scale).floor().long().clamp(0, size - 1)
    in_target = target[torch.arange(target.shape[0], device=target.device), row, col]
    labels = torch.where(found, in_target.long(), torch.full_like(in_target, NOT_A_POINT, dtype=torch.long))
    return coords, labels


def boxes_from_masks(masks: torch.Tensor, scale: float, generator: torch.Generator | None = None,
                     noise: float = 0.1, max_noise: float = 20.0) -> torch.Tensor:
    """Bounding boxes (P, 4) XYXY input frame of masks (P, L, L), each side jittered by up to `noise` of the box
    side (at most `max_noise` input pixels), as SAM's training does. Empty masks give a zero box."""
    p, size = masks.shape[0], masks.shape[-1]
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar = torch.arange(size, device=masks.device)
    big = size + 1
    y0 = torch.where(rows, ar, big).min(dim=1).values
    y1 = torch.where(rows, ar, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar, big).min(dim=1).values
    x1 = torch.where(cols, ar, -1).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float() * scale
    empty = ~masks.reshape(p, -1).any(dim=1)
    boxes[empty] = 0.0
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
    amp = (side * noise).clamp(max=max_noise)
    jitter = (torch.rand((p, 4), generator=generator, device=masks.device) * 2 - 1) * amp
    limit = size * scale
    return (boxes + jitter).clamp(0, limit)


Decode = Callable[[Prompts], tuple[torch.Tensor, torch.Tensor]]


def hard_prompt_sampler(decode: Decode, targets: torch.Tensor, initial: Prompts, rounds: int, scale: float,
                        generator: torch.Generator | None = None) -> Prompts:
    """Refine `initial` prompts for `rounds` rounds against `targets` (P, L, L) bool.

    decode(prompts) → (low-res logits (P, 3, L, L), predicted IoU (P, 3)): the student's current decoder
    (the caller runs this without gradients). Each round takes the student's most confident mask, adds one
    point from its error region and feeds its logits back as `mask_input`.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    prompts = initial
    index = torch.arange(targets.shape[0], device=targets.device)
    for _ in range(rounds):
        low_res, iou = decode(prompts)
        best = low_res[index, iou.argmax(dim=1)]
        coords, labels = sample_error_points(best > MASK_THRESHOLD, targets, scale, generator)
        prompts = replace(prompts.add_points(coords, labels), mask_input=best[:, None].detach())
    return prompts
