"""The scale search of one quantization point, on the samples the recorder kept.

For every scale, candidates `α · max|x| / qmax` with α from `candidate_ratios` (the paper's 100 values in
[0.01, 1.2], plus 1.0). Each candidate is scored by the distortion it causes at the point's output, weighted by
the output's sensitivity (`recorder`): Σ H ⊙ (Ô − O)², the second-order change of the final outputs. The search
alternates input scale → weight scales → output scale (per head for attention: q → k → probabilities → v) for
`rounds` rounds, each scale searched coarse to fine (`grid_search`) with the others held.

Speed (the search was most of `tinysam quantize`'s time on a CPU), with the same result up to float rounding:
- the candidates of a step are scored together (a candidate axis; for weights and attention, candidates side by
  side along an output axis), in blocks of candidates × sample rows of at most `BATCH_ELEMENTS`, so that the few
  passes over each block run in cache; the samples of all calibration calls of a point form one batch;
- what a step holds fixed (the other operands' quantized values; the probabilities when only p or v move) is
  computed once per step;
- conv and linear products are computed on the integers, int8 × int8 → int32 (`_Layer`), as the int8 kernels do;
- `calibrate.search_scales` searches several points at once, one thread each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .fake_quant import INT8_MAX, fake_quant, fold_conv_bn
from .points import QuantPoint
from .qdq import ACT_B_QMAX, ACT_B_QMIN, PointScales

if TYPE_CHECKING:
    from .calibrate import CalibrationConfig

COARSE_STEP = 5
BATCH_ELEMENTS = 1 << 20
"""Elements (4 MiB of float32) one block of candidates × sample rows may create: the few passes each candidate
takes over its tensors then run in cache, ~4x faster than over the whole batch at once."""
MIN_ROWS = 32
"""Fewest sample rows of a conv / linear point per block (below that, per-call overhead outweighs the cache)."""


def candidate_ratios(cfg: CalibrationConfig) -> torch.Tensor:
    """Candidate fractions of the observed range; 1.0 (plain max-abs) is always among them."""
    if cfg.candidates == 1:
        return torch.tensor([1.0])
    return torch.unique(torch.cat([torch.linspace(cfg.min_ratio, cfg.max_ratio, cfg.candidates), torch.ones(1)]))


def grid_search(error: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, groups: int | None = None
                ) -> torch.Tensor:
    """Best candidate of `grid` for `error`, coarse to fine: every COARSE_STEP-th candidate (and 1.0), then
    every candidate within COARSE_STEP of the best coarse one.

    `error` scores a batch of K candidates at once. groups None: `error(ratios (K,))` → (K,) and one ratio is
    returned. groups G: independent groups (channels, heads) searched at once: `error(ratios (K, G))` → (K, G)
    and the (G,) best ratios are returned. Ties go to the first candidate in the order coarse (ascending), then
    fine (offsets −COARSE_STEP+1 … COARSE_STEP−1). The result is the grid's best wherever the error is unimodal in
    the ratio, at about a third of the evaluations.
    """
    n = len(grid)
    coarse = torch.tensor(sorted(set(range(0, n, COARSE_STEP)) | {int(torch.argmin((grid - 1.0).abs()))} | {n - 1}))
    offsets = torch.tensor([o for o in range(-COARSE_STEP + 1, COARSE_STEP) if o])
    if groups is not None:
        coarse = coarse[:, None].expand(-1, groups)
    best_err, best_idx = _first_min(error(grid[coarse]), coarse)
    fine = (best_idx.unsqueeze(0) + (offsets if groups is None else offsets[:, None])).clamp(0, n - 1)
    fine_err, fine_idx = _first_min(error(grid[fine]), fine)
    return grid[torch.where(fine_err < best_err, fine_idx, best_idx)]


def _first_min(err: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest error over the candidate axis 0 (NaN never wins; first one on ties) and its grid index."""
    err = torch.nan_to_num(err, nan=float("inf"))
    pos = torch.argmin(err, dim=0, keepdim=True)
    return err.gather(0, pos).squeeze(0), idx.gather(0, pos).squeeze(0)


def _blockwise(cands: torch.Tensor, rows: int, width: int, run: Callable[[object, slice], torch.Tensor],
               prepare: Callable[[torch.Tensor], object] = lambda c: c, fixed: int = 0, min_rows: int = MIN_ROWS
               ) -> torch.Tensor:
    """Errors of K candidates, (K, …), computed in blocks of candidates × sample rows that stay in cache.

    `width`: elements one candidate creates per sample row; `fixed`: elements one candidate creates whatever the
    rows (its quantized weights); at least `min_rows` rows per block. For each slice of candidates, `prepare(slice)` runs once and `run(state, rows)`
    per block of rows; the row blocks' errors are summed (the error is a sum over rows).
    """
    kc = max(1, min(len(cands), BATCH_ELEMENTS // max(1, min_rows * width + fixed)))
    nb = max(min(rows, min_rows), min(rows, (BATCH_ELEMENTS - kc * fixed) // max(1, kc * width)))
    out = []
    for i in range(0, len(cands), kc):
        state = prepare(cands[i:i + kc])
        total = run(state, slice(0, nb))
        for r in range(nb, rows, nb):
            total += run(state, slice(r, r + nb))
        out.append(total)
    return torch.cat(out)


def weighted_error(y: torch.Tensor, o: torch.Tensor, h: torch.Tensor | None, dims) -> torch.Tensor:
    """Σ h ⊙ (y − o)² over `dims` (all when None); plain squared error without `h`."""
    d = (y - o).square_()
    if h is not None:
        d.mul_(h)
    return d.sum(dim=dims)


def _integers(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
    """clamp(round(x / s), lo, hi): the integers of `fake_quant` (which multiplies them by s again)."""
    return torch.div(x, scale).round_().clamp_(lo, hi).to(dtype)


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (m, k) · int8 (k, n) → int32 (m, n), exact; in float (also exact here) where torch lacks `_int_mm`."""
    int_mm = getattr(torch, "_int_mm", None)
    return int_mm(a, b) if int_mm is not None else (a.float() @ b.float()).to(torch.int32)


class _Layer:
    """A conv / transposed conv / linear point as one matrix product on its recorded samples.

    x (N, J) · w (M, J)ᵀ + b → y (N, M): J = Cin·k·k of a conv's k×k input patch (one output pixel each), M the
    output channels × `rep` outputs each (a transposed conv's s×s block per input pixel); a grouped conv is one
    such product per group. Quantized, y = s_x · s_w · (z_x · z_wᵀ) + b with integer z: the products are computed
    exactly in int8 × int8 → int32 (`torch._int_mm`, what the int8 kernels compute; several times faster than
    the float product of the dequantized values on CPUs with int8 dot-product instructions), or for grouped
    convs, whose few products per output are cheap, exactly in float.
    """

    def __init__(self, pt: QuantPoint) -> None:
        m = pt.module
        self.groups, self.rep = 1, 1
        if pt.kind == "conv":
            w, b, conv = fold_conv_bn(m)
            self.groups = conv.groups
            self.axis, self.per_channel = 0, True
            w2 = w.reshape(w.shape[0], -1)
        elif pt.kind == "conv_transpose":  # w (Cin, Cout, s, s)
            if m.groups != 1 or m.kernel_size != m.stride:
                raise ValueError(f"{pt.name}: the search handles transposed convs with kernel == stride, groups 1")
            w, b = m.weight, m.bias
            self.axis, self.per_channel = 1, True
            self.rep = m.stride[0] * m.stride[1]
            w2 = w.reshape(w.shape[0], -1).T
        else:
            w, b = m.weight, m.bias
            self.axis, self.per_channel = None, False
            w2 = w
        self.w = w.detach()
        self.w2 = w2.detach().contiguous()  # (M, J)
        self.b2 = None if b is None else b.detach().repeat_interleave(self.rep)
        self.dtype = torch.int8 if self.groups == 1 else torch.float32

    def row_scales(self, s_w: torch.Tensor) -> torch.Tensor:
        """Weight scales (…, Cout) per channel, or (…) per layer → per row of w2 (…, M) or (…, 1)."""
        return s_w.repeat_interleave(self.rep, dim=-1) if self.per_channel else s_w.unsqueeze(-1)

    def input_integers(self, x: torch.Tensor, s_x: torch.Tensor) -> torch.Tensor:
        """Samples (…, N, J) at input scale(s) s_x (broadcast) → integers, int8 (float for grouped convs)."""
        return _integers(x, s_x, -128, INT8_MAX, self.dtype)

    def weight_integers(self, s_rows: torch.Tensor) -> torch.Tensor:
        """Weights at row scales (…, M or 1) → integers (…, M, J)."""
        return _integers(self.w2, s_rows.unsqueeze(-1), -INT8_MAX, INT8_MAX, self.dtype)

    def output(self, zx: torch.Tensor, zw: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """y (K, N, M) = scale · (zx · zwᵀ) + b for K candidates, along zx (K, N, J) or along zw (K, M, J);
        `scale` (K, 1, M or 1)."""
        if self.groups == 1:
            if zx.ndim == 3:
                k, n = zx.shape[:2]
                prod = _int_matmul(zx.reshape(k * n, -1), zw.T).view(k, n, -1)
            else:
                k, n = zw.shape[0], zx.shape[0]
                prod = _int_matmul(zx, zw.reshape(-1, zw.shape[-1]).T).view(n, k, -1).transpose(0, 1)
            y = prod.float().mul_(scale)
        else:
            g = self.groups
            zxg = zx.unflatten(-1, (g, -1))
            zwg = zw.unflatten(-2, (g, -1))  # (…, g, M/g, J/g)
            if zx.ndim == 3:
                prod = torch.einsum("kngj,goj->kngo", zxg, zwg)
            else:
                prod = torch.einsum("ngj,kgoj->kngo", zxg, zwg)
            y = prod.flatten(2).mul_(scale)
        return y if self.b2 is None else y.add_(self.b2)


def search_layer(pt: QuantPoint, cfg: CalibrationConfig) -> tuple[PointScales, dict]:
    """Alternating search of input / weight / (conv) output scales for a conv, transposed conv or linear point."""
    layer = _Layer(pt)
    w, axis, per_channel = layer.w, layer.axis, layer.per_channel
    X = torch.cat(pt.x).flatten(1)  # (N, J)
    O = torch.cat(pt.o)
    H = torch.cat([h if h is not None else torch.zeros_like(o) for h, o in zip(pt.h, pt.o)])
    if not torch.any(H > 0):
        H = None  # no gradient reached this point (unused by these prompts): plain output MSE
    n = len(X)
    cout = O.shape[1]
    O = O.reshape(n, cout * layer.rep)
    H = None if H is None else H.reshape(O.shape)
    ratios = candidate_ratios(cfg)
    x_max = max(pt.x_max, 1e-8)
    o_max = max(pt.o_max, 1e-8)
    if per_channel:
        w_max = w.abs().transpose(0, axis).flatten(1).amax(1).clamp_min(1e-8)
    else:
        w_max = w.abs().max().clamp_min(1e-8)
    s_x = torch.tensor(x_max / INT8_MAX)
    s_w = w_max / INT8_MAX
    has_out = pt.kind in ("conv", "conv_transpose")
    s_o = torch.tensor(o_max / INT8_MAX)

    def error(y: torch.Tensor, r: slice, channels: bool = False) -> torch.Tensor:
        """(K, rows, M) outputs of sample rows r → distortion (K,), or (K, Cout) per output channel."""
        if not channels:
            return weighted_error(y, O[r], None if H is None else H[r], (1, 2))
        y = y.view(*y.shape[:2], cout, layer.rep)
        return weighted_error(y, O[r].view(-1, cout, layer.rep), None if H is None else H[r].view(-1, cout, layer.rep),
                              (1, 3))

    def input_error(s_w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        zw, s_rows = layer.weight_integers(layer.row_scales(s_w)), layer.row_scales(s_w)

        def run(s: torch.Tensor, r: slice) -> torch.Tensor:  # s (K, 1, 1)
            return error(layer.output(layer.input_integers(X[r].unsqueeze(0), s), zw, s * s_rows), r)
        return lambda a: _blockwise(a, n, X.shape[1] + 2 * O.shape[1], run, lambda a_: (a_ * x_max / INT8_MAX).view(-1, 1, 1))

    def weight_error(s_x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        zx = layer.input_integers(X, s_x)

        def prepare(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # a (K, Cout) per channel, (K,) per layer
            s_rows = layer.row_scales(a * w_max / INT8_MAX)
            return layer.weight_integers(s_rows), s_x * s_rows.unsqueeze(1)

        def run(state: tuple[torch.Tensor, torch.Tensor], r: slice) -> torch.Tensor:
            zw, scale = state
            return error(layer.output(zx[r], zw, scale), r, per_channel)
        return lambda a: _blockwise(a, n, 2 * O.shape[1], run, prepare, fixed=w.numel())

    def output_error(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(s: torch.Tensor, r: slice) -> torch.Tensor:
            return error(fake_quant(y[r].unsqueeze(0), s), r)
        return lambda a: _blockwise(a, n, 2 * O.shape[1], run, lambda a_: (a_ * o_max / INT8_MAX).view(-1, 1, 1))

    def quantized_output(s_x: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
        """(N, M): the point's output with input and weights quantized (before any output quantization)."""
        s_rows = layer.row_scales(s_w)
        return layer.output(layer.input_integers(X, s_x).unsqueeze(0), layer.weight_integers(s_rows),
                            s_x * s_rows).squeeze(0)

    for _ in range(cfg.rounds):
        s_x = grid_search(input_error(s_w), ratios) * x_max / INT8_MAX
        s_w = grid_search(weight_error(s_x), ratios, len(w_max) if per_channel else None) * w_max / INT8_MAX
        if has_out:
            s_o = grid_search(output_error(quantized_output(s_x, s_w)), ratios) * o_max / INT8_MAX

    def distortion(sx: torch.Tensor, sw: torch.Tensor, so: torch.Tensor) -> float:
        y = quantized_output(sx, sw)
        if has_out:
            y = fake_quant(y, so)
        return float(weighted_error(y, O, H, None))

    err = distortion(s_x, s_w, s_o)
    err0 = None
    if cfg.rounds:
        err0 = distortion(torch.tensor(x_max / INT8_MAX), w_max / INT8_MAX, torch.tensor(o_max / INT8_MAX))
    scales = PointScales(pt.kind, s_x.float().numpy(), s_w.float().numpy(), s_o.float().numpy() if has_out else None)
    return scales, {"distortion": err, "distortion_max_abs_scales": err0}


# ----------------------------------------------------------------------------- attention
QUANT_RANGE = {"q": (-128, INT8_MAX), "k": (ACT_B_QMIN, ACT_B_QMAX), "p": (0, 255), "v": (ACT_B_QMIN, ACT_B_QMAX)}
"""Grid of each attention operand: q int8, kᵀ and v 7-bit (`qdq.ACT_B_QMAX`), probabilities uint8."""


class _AttentionSamples:
    """The recorded samples of one attention point, merged over calibration calls into one batch
    (B, heads, Nq, ·); bias (B, heads, Nq, Nk) or None; fp32 product `o` and its sensitivity `h`."""

    def __init__(self, pt: QuantPoint) -> None:
        self.scale = pt.extra[0][1]
        self.q = torch.cat([x[0] for x in pt.x])
        self.k = torch.cat([x[1] for x in pt.x])
        self.v = torch.cat([x[2] for x in pt.x])
        biases = [e[0] for e in pt.extra]
        self.bias = None if biases[0] is None else torch.cat(
            [b.unsqueeze(0).expand(len(x[0]), *b.shape) for b, x in zip(biases, pt.x)])
        self.o = torch.cat(pt.o)
        self.h = torch.cat([h if h is not None else torch.ones_like(o) for h, o in zip(pt.h, pt.o)])

    def quant(self, t: torch.Tensor, key: str, s: torch.Tensor) -> torch.Tensor:
        """Fake-quantize operand `t` (B, heads, [K,] N, c) with per-head scales s (heads,) or (heads, K)."""
        lo, hi = QUANT_RANGE[key]
        return fake_quant(t, s.reshape(1, *s.shape, *([1] * (t.ndim - 1 - s.ndim))), lo, hi)

    def probs(self, qq: torch.Tensor, kq: torch.Tensor, r: slice, candidates: int | None = None) -> torch.Tensor:
        """softmax(q·kᵀ · scale + bias) of sample rows r → (b, heads, Nq, Nk), or (b, heads, K, Nq, Nk) when qq or
        kq carries a candidate axis 2 (b, heads, K, N, c), or qq holds K candidates along its rows (`candidates`)."""
        logits = (qq @ kq.transpose(-2, -1)).mul_(self.scale)
        if candidates is not None and logits.ndim == 4:
            logits = logits.view(logits.shape[0], logits.shape[1], candidates, -1, logits.shape[-1])
        if self.bias is not None:
            logits.add_(self.bias[r] if logits.ndim == 4 else self.bias[r].unsqueeze(2))
        return logits.softmax(dim=-1)

    def error(self, out: torch.Tensor, r: slice) -> torch.Tensor:
        """out (b, heads, K, Nq, c) of sample rows r → weighted distortion (K, heads)."""
        return weighted_error(out, self.o[r].unsqueeze(2), self.h[r].unsqueeze(2), (0, 3, 4)).T

    def product(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """probabilities · v with all four operands quantized at scales s (heads,) → (B, heads, Nq, c)."""
        p = self.probs(self.quant(self.q, "q", s["q"]), self.quant(self.k, "k", s["k"]), slice(None))
        return self.quant(p, "p", s["p"]) @ self.quant(self.v, "v", s["v"])

    def step(self, key: str, s: dict[str, torch.Tensor]) -> tuple[Callable[[torch.Tensor, slice], torch.Tensor], int]:
        """Scorer of candidate scales (K, heads) for operand `key` on sample rows r, the others held at s; and the
        elements one candidate creates per sample row. What does not depend on `key` is computed here, once."""
        _, nh, nq, c = self.q.shape
        nk = self.k.shape[2]
        if key in ("q", "k"):
            qq = None if key == "q" else self.quant(self.q, "q", s["q"]).unsqueeze(2)
            kq = None if key == "k" else self.quant(self.k, "k", s["k"])
            vq = self.quant(self.v, "v", s["v"])

            def run(sc: torch.Tensor, r: slice) -> torch.Tensor:
                if key == "q":  # candidates along the query axis: one (b, heads, K·Nq, Nk) product
                    qc = self.quant(self.q[r].unsqueeze(2), "q", sc.T).flatten(2, 3)
                    p = self.probs(qc, kq[r], r, len(sc))
                else:
                    p = self.probs(qq[r], self.quant(self.k[r].unsqueeze(2), "k", sc.T), r)
                p = self.quant(p, "p", s["p"])
                return self.error((p.flatten(2, 3) @ vq[r]).unflatten(2, (len(sc), nq)), r)
            return run, nh * (2 * nq * nk + (nk if key == "k" else nq) * c)
        if key == "p":
            p = self.probs(self.quant(self.q, "q", s["q"]), self.quant(self.k, "k", s["k"]), slice(None)).unsqueeze(2)
            vq = self.quant(self.v, "v", s["v"])

            def run(sc: torch.Tensor, r: slice) -> torch.Tensor:
                pc = self.quant(p[r], "p", sc.T).flatten(2, 3)
                return self.error((pc @ vq[r]).unflatten(2, (len(sc), nq)), r)
            return run, nh * (nq * nk + nq * c)
        p = self.probs(self.quant(self.q, "q", s["q"]), self.quant(self.k, "k", s["k"]), slice(None))
        pq = self.quant(p, "p", s["p"])

        def run(sc: torch.Tensor, r: slice) -> torch.Tensor:  # candidates side by side along v's channels
            vc = self.quant(self.v[r].unsqueeze(2), "v", sc.T)  # (b, heads, K, Nk, c)
            b = vc.shape[0]
            out = pq[r] @ vc.permute(0, 1, 3, 2, 4).reshape(b, nh, nk, len(sc) * c)
            return self.error(out.view(b, nh, nq, len(sc), c).transpose(2, 3), r)
        return run, nh * (nk * c + nq * c)


def search_attention(pt: QuantPoint, cfg: CalibrationConfig) -> tuple[PointScales, dict]:
    """Per-head alternating search of the q, k, probability and v scales (heads are independent)."""
    ratios = candidate_ratios(cfg)
    samples = _AttentionSamples(pt)
    top = {key: hi for key, (_, hi) in QUANT_RANGE.items()}
    base = {key: pt.head_max[key].clamp_min(1e-8) / top[key] for key in top}
    s = dict(base)

    def distortion(sc: dict) -> float:
        return float(weighted_error(samples.product(sc), samples.o, samples.h, None))

    for _ in range(cfg.rounds):
        for key in ("q", "k", "p", "v"):
            run, width = samples.step(key, s)

            def error(a: torch.Tensor, key=key, run=run, width=width) -> torch.Tensor:
                return _blockwise(a * base[key], len(samples.q), width, run, min_rows=1)
            s[key] = grid_search(error, ratios, len(base[key])) * base[key]
    info = {"distortion": distortion(s)}
    if cfg.rounds:
        info["distortion_max_abs_scales"] = distortion(base)
    scales = PointScales("attention", s["q"].numpy(), extra={"k": s["k"].numpy(), "p": s["p"].numpy(),
                                                             "v": s["v"].numpy()})
    return scales, info
