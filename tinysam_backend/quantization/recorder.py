"""Recording what the scale search needs from real forwards: sampled inputs, fp32 outputs and output sensitivities.

Each calibration image runs through the model once, forward and backward. Forward hooks on convolutions and
linear layers, and the attention modules' `observer` (the model's own attention forward, not a copy), keep a
random sample of each point's inputs and fp32 outputs; gradient hooks on those outputs keep the squared
sensitivity of the final outputs to them. The backward pass carries random output-side vectors r ~ N(0, H_out),
so E[(Jᵀr)²] = diag(Jᵀ H_out J): an unbiased estimate of the diagonal Gauss–Newton Hessian of the output
distortion (Bernoulli KL of every low-res mask logit + squared error of the IoU predictions) at every point.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..modeling.contract import image_to_input
from ..modeling.image_encoder_tinyvit import WindowAttention
from ..modeling.sam import Sam
from .calibration_data import calibration_prompts
from .fake_quant import fold_conv_bn
from .points import QuantPoint

if TYPE_CHECKING:
    from .calibrate import CalibrationConfig

logger = logging.getLogger(__name__)


def max_abs(t: torch.Tensor, dim: tuple[int, ...] | None = None) -> float | torch.Tensor:
    """max |t| (a float), or over `dim` (a tensor): as max(max, −min), two reductions and no |t| copy."""
    if dim is None:
        lo, hi = torch.aminmax(t)
        return max(float(hi), -float(lo))
    return torch.maximum(t.amax(dim), t.amin(dim).neg())


def conv_patches(x: torch.Tensor, bi: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, k: int, s: int, p: int
                 ) -> torch.Tensor:
    """The (N, C, k, k) input windows of a k×k convolution (stride s, zero padding p) at output positions
    (image bi, row ii, column jj), gathered from x (B, C, H, W) without padding the whole tensor."""
    h, w = x.shape[-2:]
    ar = torch.arange(k)
    rows, cols = (ii * s - p)[:, None] + ar, (jj * s - p)[:, None] + ar  # (N, k)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (N, k, k)
    g = x[bi[:, None, None], :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # (N, k, k, C)
    return torch.where(inside[..., None], g, 0.0).permute(0, 3, 1, 2)


class ActivationRecorder:
    """Context manager: hooks on every point's module that fill its `QuantPoint` lists; removed on exit."""

    def __init__(self, points: list[QuantPoint], cfg: CalibrationConfig) -> None:
        self.points = points
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.handles: list = []
        self.observed: list[nn.Module] = []

    def _rand(self, n: int, k: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen)[: min(n, k)]

    def _grad_into(self, point: QuantPoint, y: torch.Tensor, index: Callable[[torch.Tensor], torch.Tensor]) -> None:
        slot = len(point.h)
        point.h.append(None)
        if y.requires_grad:
            def hook(g: torch.Tensor) -> None:
                point.h[slot] = index(g.detach()).square()
            y.register_hook(hook)

    def _conv_hook(self, point: QuantPoint):
        def hook(m, inp, y):
            x = inp[0].detach()
            conv = fold_conv_bn(m)[2] if point.kind == "conv" else m
            point.x_max = max(point.x_max, max_abs(x))
            point.o_max = max(point.o_max, max_abs(y.detach()))
            b, _, ho, wo = y.shape
            if point.kind == "conv":
                k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
                idx = self._rand(b * ho * wo, self.cfg.rows_per_image)
                bi, rem = idx // (ho * wo), idx % (ho * wo)
                ii, jj = rem // wo, rem % wo
                patches = conv_patches(x, bi, ii, jj, k, s, p)
                sel = (bi, slice(None), ii, jj)

                def index(t: torch.Tensor) -> torch.Tensor:
                    return t[bi, :, ii, jj]
            else:  # transposed conv, kernel == stride: each input pixel makes one output block
                k = conv.stride[0]
                hi, wi = x.shape[-2:]
                idx = self._rand(b * hi * wi, self.cfg.rows_per_image)
                bi, rem = idx // (hi * wi), idx % (hi * wi)
                ii, jj = rem // wi, rem % wi
                patches = x[bi, :, ii, jj][:, :, None, None]

                def index(t: torch.Tensor) -> torch.Tensor:
                    blocks = t.unfold(2, k, k).unfold(3, k, k)  # (B, C, hi, wi, k, k)
                    return blocks[bi, :, ii, jj]
                sel = None
            point.x.append(patches)
            point.o.append(index(y.detach()) if sel is None else y.detach()[sel])
            self._grad_into(point, y, index)
        return hook

    def _linear_hook(self, point: QuantPoint):
        def hook(m, inp, y):
            x = inp[0].detach()
            point.x_max = max(point.x_max, max_abs(x))
            rows_x = x.reshape(-1, x.shape[-1])
            idx = self._rand(rows_x.shape[0], self.cfg.rows_per_image)
            point.x.append(rows_x[idx])
            point.o.append(y.detach().reshape(-1, y.shape[-1])[idx])
            self._grad_into(point, y, lambda g: g.reshape(-1, g.shape[-1])[idx])
        return hook

    def _attention_observer(self, point: QuantPoint):
        """The module's `observer`: per-head ranges of q, k, probabilities and v over every call, and a sample of
        (batch or window) rows and query rows of q, k, v, bias and the product `out`, with its sensitivity."""
        m = point.module
        encoder = isinstance(m, WindowAttention)
        rows = self.cfg.windows_per_call if encoder else self.cfg.decoder_attention_rows

        def observe(q, k, v, probs, out, bias=None) -> None:
            for key, t in (("q", q), ("k", k), ("p", probs), ("v", v)):
                if key == "p":
                    hm = t.detach().amax(dim=(0, 2, 3))  # probabilities are >= 0
                else:  # reduced in the projection's storage order (B, N, heads, c): ~2x faster than (B, heads, N, c)
                    hm = max_abs(t.detach().transpose(1, 2), (0, 1, 3))
                point.head_max[key] = hm if key not in point.head_max else torch.maximum(point.head_max[key], hm)
            # the logit multiplier of q·kᵀ (the decoder divides by √c, the graph and the simulation multiply)
            scale = m.scale if encoder else 1.0 / (q.shape[-1] ** 0.5)
            bsel = self._rand(q.shape[0], rows)
            qsel = self._rand(q.shape[2], self.cfg.query_rows)
            b_ = None if bias is None else bias.detach()[:, qsel]
            point.x.append((q.detach()[bsel][:, :, qsel], k.detach()[bsel], v.detach()[bsel]))
            point.extra.append((b_, scale))
            point.o.append(out.detach()[bsel][:, :, qsel])
            self._grad_into(point, out, lambda g: g[bsel][:, :, qsel])
        return observe

    def __enter__(self) -> None:
        for pt in self.points:
            m = pt.module
            if pt.kind in ("conv", "conv_transpose"):
                self.handles.append(m.register_forward_hook(self._conv_hook(pt)))
            elif pt.kind == "linear":
                self.handles.append(m.register_forward_hook(self._linear_hook(pt)))
            else:
                m.observer = self._attention_observer(pt)
                self.observed.append(m)

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        for m in self.observed:
            del m.observer  # the instance attribute goes: the class default (None) is back


def output_vectors(low_res: torch.Tensor, iou: torch.Tensor, iou_weight: float, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """r ~ N(0, H_out): mask logits with the Bernoulli-KL Hessian σ(1−σ), IoU with the squared-error Hessian."""
    sig = torch.sigmoid(low_res.detach())
    r_mask = torch.sqrt(sig * (1 - sig) / low_res[0].numel()) * torch.randn(low_res.shape, generator=gen)
    r_iou = math.sqrt(iou_weight / iou.shape[-1]) * torch.randn(iou.shape, generator=gen)
    return r_mask, r_iou


def collect_calibration_data(sam: Sam, images: Sequence[np.ndarray], points: list[QuantPoint],
                             cfg: CalibrationConfig) -> None:
    """Run each image (and its prompts) forward and backward once, filling the points' sampled data."""
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    for p in sam.parameters():
        p.requires_grad_(False)
    with ActivationRecorder(points, cfg):
        for n, rgb in enumerate(images):
            t0 = time.perf_counter()
            x, input_size = image_to_input(rgb, sam.image_size)
            x.requires_grad_(True)
            with torch.enable_grad():
                emb = sam.image_encoder(x)
                pts, boxes = calibration_prompts(input_size, cfg.prompts_per_image, rng)
                loss = 0.0
                for prompt in ({"points": pts}, {"boxes": boxes}):
                    if next(iter(prompt.values())) is None:
                        continue
                    low, iou = sam.decode(emb, **prompt)
                    r_mask, r_iou = output_vectors(low, iou, cfg.iou_weight, gen)
                    loss = loss + (low * r_mask).sum() + (iou * r_iou).sum()
                loss.backward()
            logger.info("calibration image %d/%d recorded in %.1f s", n + 1, len(images), time.perf_counter() - t0)
