"""The scale search of one quantization point, on the samples the recorder kept.

For every scale, candidates `α · max|x| / qmax` with α from `candidate_ratios` (the paper's 100 values in
[0.01, 1.2], plus 1.0). Each candidate is scored by the distortion it causes at the point's output, weighted by
the output's sensitivity (`recorder`): Σ H ⊙ (Ô − O)², the second-order change of the final outputs. The search
alternates input scale → weight scales → output scale (per head for attention: q → k → probabilities → v) for
`rounds` rounds, each scale searched coarse to fine (`grid_search`) with the others held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .fake_quant import INT8_MAX, fake_quant, fake_quant_weight, fold_conv_bn
from .points import QuantPoint
from .qdq import ACT_B_QMAX, ACT_B_QMIN, PointScales

if TYPE_CHECKING:
    from .calibrate import CalibrationConfig

COARSE_STEP = 5


def candidate_ratios(cfg: CalibrationConfig) -> torch.Tensor:
    """Candidate fractions of the observed range; 1.0 (plain max-abs) is always among them."""
    if cfg.candidates == 1:
        return torch.tensor([1.0])
    return torch.unique(torch.cat([torch.linspace(cfg.min_ratio, cfg.max_ratio, cfg.candidates), torch.ones(1)]))


def grid_search(error: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, groups: int | None = None
                ) -> torch.Tensor:
    """Best candidate of `grid` for `error`, coarse to fine: every COARSE_STEP-th candidate (and 1.0), then
    every candidate within COARSE_STEP of the best coarse one.

    groups None: `error(ratio ())` → () and one ratio is returned. groups G: independent groups (channels,
    heads) searched at once: `error(ratios (G,))` → (G,) and the (G,) best ratios are returned. The result is
    the grid's best wherever the error is unimodal in the ratio, at about a third of the evaluations.
    """
    n = len(grid)
    shape = () if groups is None else (groups,)
    coarse = sorted(set(range(0, n, COARSE_STEP)) | {int(torch.argmin((grid - 1.0).abs()))} | {n - 1})
    best_err = torch.full(shape, float("inf"))
    best_idx = torch.zeros(shape, dtype=torch.long)

    def consider(idx: torch.Tensor) -> None:
        nonlocal best_err, best_idx
        e = error(grid[idx])
        better = e < best_err
        best_err = torch.where(better, e, best_err)
        best_idx = torch.where(better, idx, best_idx)

    for i in coarse:
        consider(torch.full(shape, i, dtype=torch.long))
    centre = best_idx.clone()
    for off in range(-COARSE_STEP + 1, COARSE_STEP):
        if off:
            consider((centre + off).clamp(0, n - 1))
    return grid[best_idx]


def weighted_error(y: torch.Tensor, o: torch.Tensor, h: torch.Tensor | None, dims) -> torch.Tensor:
    """Σ h ⊙ (y − o)² over `dims` (all when None); plain squared error without `h`."""
    d = (y - o).square()
    if h is not None:
        d = d * h
    return d.sum(dim=dims)


def search_layer(pt: QuantPoint, cfg: CalibrationConfig) -> tuple[PointScales, dict]:
    """Alternating search of input / weight / (conv) output scales for a conv, transposed conv or linear point."""
    m = pt.module
    if pt.kind == "conv":
        w, b, conv = fold_conv_bn(m)
        w, b = w.detach(), None if b is None else b.detach()

        def f(x, wq):
            return F.conv2d(x, wq, b, 1, 0, 1, conv.groups).flatten(1)
        axis, per_channel = 0, True
    elif pt.kind == "conv_transpose":
        w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()

        def f(x, wq):
            return F.conv_transpose2d(x, wq, b, m.stride)
        axis, per_channel = 1, True
    else:
        w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()

        def f(x, wq):
            return F.linear(x, wq, b)
        axis, per_channel = None, False
    X = torch.cat(pt.x)
    O = torch.cat(pt.o)
    H = torch.cat([h if h is not None else torch.zeros_like(o) for h, o in zip(pt.h, pt.o)])
    if not torch.any(H > 0):
        H = None  # no gradient reached this point (unused by these prompts): plain output MSE
    ratios = candidate_ratios(cfg)
    x_max = max(pt.x_max, 1e-8)
    ch_dims = (0,) + tuple(range(2, O.ndim))  # all but the channel axis
    if per_channel:
        w_max = w.abs().transpose(0, axis).flatten(1).amax(1).clamp_min(1e-8)
    else:
        w_max = w.abs().max().clamp_min(1e-8)
    s_x = torch.tensor(x_max / INT8_MAX)
    s_w = w_max / INT8_MAX
    has_out = pt.kind in ("conv", "conv_transpose")
    s_o = torch.tensor(max(pt.o_max, 1e-8) / INT8_MAX)
    err0 = None
    for _ in range(cfg.rounds):
        wq = fake_quant_weight(w, s_w, axis)
        s_x = grid_search(lambda a: weighted_error(f(fake_quant(X, a * x_max / INT8_MAX), wq), O, H, None),  # noqa: B023
                          ratios) * x_max / INT8_MAX
        xq = fake_quant(X, s_x)
        if per_channel:
            s_w = grid_search(lambda a: weighted_error(f(xq, fake_quant_weight(w, a * w_max / INT8_MAX, axis)),  # noqa: B023
                                                       O, H, ch_dims), ratios, len(w_max)) * w_max / INT8_MAX
        else:
            s_w = grid_search(lambda a: weighted_error(f(xq, fake_quant_weight(w, a * w_max / INT8_MAX, None)),  # noqa: B023
                                                       O, H, None), ratios) * w_max / INT8_MAX
        if has_out:
            y = f(xq, fake_quant_weight(w, s_w, axis))
            o_max = max(pt.o_max, 1e-8)
            s_o = grid_search(lambda a: weighted_error(fake_quant(y, a * o_max / INT8_MAX), O, H, None),  # noqa: B023
                              ratios) * o_max / INT8_MAX
    y = f(fake_quant(X, s_x), fake_quant_weight(w, s_w, axis))
    if has_out:
        y = fake_quant(y, s_o)
    err = float(weighted_error(y, O, H, None))
    if cfg.rounds:
        wq0 = fake_quant_weight(w, w_max / INT8_MAX, axis)
        y0 = f(fake_quant(X, torch.tensor(x_max / INT8_MAX)), wq0)
        if has_out:
            y0 = fake_quant(y0, torch.tensor(max(pt.o_max, 1e-8) / INT8_MAX))
        err0 = float(weighted_error(y0, O, H, None))
    scales = PointScales(pt.kind, s_x.float().numpy(), s_w.float().numpy(), s_o.float().numpy() if has_out else None)
    return scales, {"distortion": err, "distortion_max_abs_scales": err0}


def attention_output(chunk, extra, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """probabilities · v of one recorded sample with q, kᵀ, probabilities and v fake-quantized per head."""
    q, k, v = chunk
    bias, scale = extra

    def hs(t):
        return t.view(1, -1, 1, 1)
    qq = fake_quant(q, hs(s["q"]))
    kq = fake_quant(k, hs(s["k"]), ACT_B_QMIN, ACT_B_QMAX)
    logits = (qq @ kq.transpose(-2, -1)) * scale
    if bias is not None:
        logits = logits + bias
    p = fake_quant(logits.softmax(dim=-1), hs(s["p"]), 0, 255)
    return p @ fake_quant(v, hs(s["v"]), ACT_B_QMIN, ACT_B_QMAX)


def search_attention(pt: QuantPoint, cfg: CalibrationConfig) -> tuple[PointScales, dict]:
    """Per-head alternating search of the q, k, probability and v scales (heads are independent)."""
    ratios = candidate_ratios(cfg)
    top = {"q": INT8_MAX, "k": ACT_B_QMAX, "p": 255, "v": ACT_B_QMAX}
    base = {key: pt.head_max[key].clamp_min(1e-8) / top[key] for key in top}
    s = dict(base)

    def error(sc: dict) -> torch.Tensor:
        total = 0.0
        for chunk, extra, o, h in zip(pt.x, pt.extra, pt.o, pt.h):
            total = total + weighted_error(attention_output(chunk, extra, sc), o, h, (0, 2, 3))
        return total  # (heads,)

    for _ in range(cfg.rounds):
        for key in ("q", "k", "p", "v"):
            s[key] = grid_search(lambda a, key=key: error({**s, key: a * base[key]}), ratios, len(base[key])) * base[key]
    info = {"distortion": float(error(s).sum())}
    if cfg.rounds:
        info["distortion_max_abs_scales"] = float(error(base).sum())
    scales = PointScales("attention", s["q"].numpy(), extra={"k": s["k"].numpy(), "p": s["p"].numpy(),
                                                             "v": s["v"].numpy()})
    return scales, info
