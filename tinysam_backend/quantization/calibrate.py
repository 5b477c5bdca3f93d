"""Post-training W8A8 calibration of TinySAM (the paper's Q-TinySAM recipe) and the int8 artifact it produces.

What is quantized (symmetric 8-bit, zero point 0), encoder **and** decoder:
- convolutions (incl. depthwise and the BatchNorm-folded `ConvBN`s) and the decoder's transposed
  convolutions: input and output per tensor, weights per output channel;
- linear layers: input per tensor, weights per layer;
- attention matrix products (q·kᵀ and probabilities·v of every TinyViT window attention and every
  two-way-transformer attention): per-head scales for q, kᵀ, probabilities (uint8, they are ≥ 0) and v
  (kᵀ and v on a 7-bit grid: ONNX Runtime's AVX2 kernel saturates with two full-range operands, see `qdq`).

What stays fp32, and why:
- LayerNorm / LayerNorm2d, softmax, GELU / ReLU and the residual additions: they run between the
  quantized products on the dequantized values (ONNX Runtime has no int8 kernels for them on CPU, and
  their inputs have outliers a per-tensor int8 grid would clip — the reason the paper keeps them too);
- the prompt encoder (Fourier features of the click/box coordinates and the 3 small convolutions of the
  mask prompt): it is < 0.1 % of the decoder's work and quantizing coordinates moves the click;
- the hypernetwork product `mask tokens · upscaled features` that forms the final mask logits and the
  IoU head's output: they *are* the outputs the search protects, and cost ~1 % of the decoder.

The scale search (`calibrate_scales`): for every quantization point, candidates `α · max|x| / 127` with α in
`linspace(0.01, 1.2, 100)`; each candidate is scored by the distortion it causes on the FINAL outputs, to
second order: Σ H ⊙ (Ô − O)² over the point's output O, where H is the diagonal of the Gauss–Newton
Hessian of the output distortion (Bernoulli KL of every low-res mask logit + squared error of the IoU
predictions) pulled back to O. H is estimated without bias from one backward pass per calibration image
with random outputs-side vectors (E[(Jᵀr)²] = diag(Jᵀ Hₒᵤₜ J) for r ~ N(0, Hₒᵤₜ)). The search alternates
input scale → weight scales → output scale (per head for attention: q → k → probabilities → v) for a few
rounds (default 2). The fp32 outputs of each point are computed on sampled rows / patches / windows of the
calibration activations to keep the search fast on CPU.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.contract import image_to_input
from ..modeling.image_encoder_tinyvit import ConvBN, WindowAttention
from ..modeling.sam import Sam
from ..modeling.transformer import Attention
from .export import DECODER_FILE, ENCODER_FILE, artifact_metadata, export_onnx, write_fp32_decoder, write_metadata
from .qdq import ACT_B_QMAX, ACT_B_QMIN, PointScales, write_qdq_model

OPENVINO_ENCODER_FILE = "image_encoder.openvino.onnx"
"""The same scales with Q/DQ placed for OpenVINO's int8 kernels (`qdq.write_qdq_model(target="openvino")`)."""

logger = logging.getLogger(__name__)

INT8_MAX = 127
DEFAULT_CALIBRATION_IMAGES = ("chelsea", "rocket", "camera", "coins", "clock", "immunohistochemistry",
                              "hubble_deep_field", "retina")
"""scikit-image's bundled photos (no download), excluding the parity images astronaut/coffee used to measure."""


@dataclass(frozen=True)
class CalibrationConfig:
    """Scale-search settings (defaults: the paper's 100 candidates in [0.01, 1.2]·range, 2 alternating rounds)."""

    candidates: int = 100
    min_ratio: float = 0.01
    max_ratio: float = 1.2
    rounds: int = 2
    rows_per_image: int = 128        # sampled output positions per conv/linear point and image
    windows_per_call: int = 4        # sampled attention windows (encoder) per image
    prompts_per_image: int = 4       # half single clicks, half boxes
    decoder_attention_rows: int = 2  # prompts per decode call whose attention tensors are kept
    query_rows: int = 64             # sampled query rows per attention
    iou_weight: float = 1.0          # weight of the IoU squared error next to the mask KL
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.rounds < 0:
            raise ValueError(f"candidates must be >= 1 and rounds >= 0, got {self.candidates} and {self.rounds}")
        if not 0 < self.min_ratio <= self.max_ratio:
            raise ValueError(f"need 0 < min_ratio <= max_ratio, got {self.min_ratio} and {self.max_ratio}")


# ----------------------------------------------------------------------------- fake quantization (simulation)
def fake_quant(x: torch.Tensor, scale: torch.Tensor, lo: int = -128, hi: int = INT8_MAX) -> torch.Tensor:
    """Symmetric quantize-dequantize: clamp(round(x / s), lo, hi) · s (round half to even, as ONNX)."""
    return torch.clamp(torch.round(x / scale), lo, hi) * scale


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is not None and scale.ndim == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = scale.view(shape)
    return fake_quant(w, scale, -INT8_MAX, INT8_MAX)


def fold_conv_bn(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, nn.Conv2d]:
    """(weight, bias, conv) of a Conv2d, or of a ConvBN with BatchNorm folded in (what the ONNX graph holds)."""
    if isinstance(m, ConvBN):
        conv, bn = m.c, m.bn
        k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return conv.weight * k.view(-1, 1, 1, 1), bn.bias - bn.running_mean * k, conv
    return m.weight, m.bias, m


# ----------------------------------------------------------------------------- quantization points
@dataclass
class QuantPoint:
    """One place the graph is quantized; `name` is its ONNX node (or attention scope) name."""

    name: str
    kind: str                # conv, conv_transpose, linear, attention
    module: nn.Module
    graph: str               # "encoder" or "decoder"
    x: list = None
    o: list = None
    h: list = None
    extra: list = None
    x_max: float = 0.0
    o_max: float = 0.0
    head_max: dict = None

    def __post_init__(self) -> None:
        self.x, self.o, self.h, self.extra = [], [], [], []
        self.head_max = {}


def onnx_scope(root: nn.Module, qualname: str) -> str:
    """Module path → the scope the TorchScript ONNX exporter gives its nodes (`/a/layers.1/seq/seq.0`)."""
    comps: list[str] = []
    mod, prev = root, ""
    for part in qualname.split("."):
        if part.isdigit():
            child = mod[int(part)]
            if isinstance(mod, nn.ModuleList):  # not called itself: no scope of its own
                comps[-1] = f"{prev}.{part}"
            else:  # nn.Sequential is called, so its scope stays and the child's is "<name>.<i>"
                comps.append(f"{prev}.{part}")
        else:
            child = getattr(mod, part)
            comps.append(part)
            prev = part
        mod = child
    return "/" + "/".join(comps)


def quantization_points(sam: Sam, encoder_nodes: set[str], decoder_nodes: set[str]) -> list[QuantPoint]:
    """All points of the recipe, resolved to node names of the exported fp32 graphs."""
    points: list[QuantPoint] = []

    def resolve(qualname: str, ops: Sequence[str], nodes: set[str]) -> str:
        scope = onnx_scope(sam, qualname)
        for op in ops:
            for cand in (f"{scope}/{op}", f"{scope}/c/{op}"):
                if cand in nodes:
                    return cand
        raise ValueError(f"no ONNX node for module {qualname} (looked for {scope}/{ops})")

    for qual, m in sam.image_encoder.named_modules(prefix="image_encoder"):
        if isinstance(m, ConvBN) or (isinstance(m, nn.Conv2d) and not qual.endswith(".c")):
            points.append(QuantPoint(resolve(qual, ("Conv",), encoder_nodes), "conv", m, "encoder"))
        elif isinstance(m, nn.Linear) and not qual.endswith(".head"):
            points.append(QuantPoint(resolve(qual, ("MatMul", "Gemm"), encoder_nodes), "linear", m, "encoder"))
        elif isinstance(m, WindowAttention):
            points.append(QuantPoint(onnx_scope(sam, qual), "attention", m, "encoder"))
    for qual, m in sam.mask_decoder.named_modules(prefix="mask_decoder"):
        if isinstance(m, nn.ConvTranspose2d):
            points.append(QuantPoint(resolve(qual, ("ConvTranspose",), decoder_nodes), "conv_transpose", m, "decoder"))
        elif isinstance(m, nn.Linear):
            if qual.startswith("mask_decoder.iou_prediction_head.layers.2"):
                continue  # the IoU output itself stays fp32 (module docstring)
            points.append(QuantPoint(resolve(qual, ("MatMul", "Gemm"), decoder_nodes), "linear", m, "decoder"))
        elif isinstance(m, Attention):
            points.append(QuantPoint(onnx_scope(sam, qual), "attention", m, "decoder"))
    return points


# ----------------------------------------------------------------------------- recording activations
class _Recorder:
    """Forward hooks (and attention forwards) that keep sampled inputs, outputs and output gradients."""

    def __init__(self, points: list[QuantPoint], cfg: CalibrationConfig) -> None:
        self.points = points
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.handles: list = []
        self.restore: list[tuple[nn.Module, str]] = []

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
            point.x_max = max(point.x_max, float(x.abs().max()))
            point.o_max = max(point.o_max, float(y.detach().abs().max()))
            b, _, ho, wo = y.shape
            if point.kind == "conv":
                k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
                xp = F.pad(x, (p, p, p, p))
                idx = self._rand(b * ho * wo, self.cfg.rows_per_image)
                bi, rem = idx // (ho * wo), idx % (ho * wo)
                ii, jj = rem // wo, rem % wo
                patches = torch.stack([xp[bb, :, i * s:i * s + k, j * s:j * s + k]
                                       for bb, i, j in zip(bi.tolist(), ii.tolist(), jj.tolist())])
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
            point.x_max = max(point.x_max, float(x.abs().max()))
            rows_x = x.reshape(-1, x.shape[-1])
            idx = self._rand(rows_x.shape[0], self.cfg.rows_per_image)
            point.x.append(rows_x[idx])
            point.o.append(y.detach().reshape(-1, y.shape[-1])[idx])
            self._grad_into(point, y, lambda g: g.reshape(-1, g.shape[-1])[idx])
        return hook

    def _record_attention(self, point: QuantPoint, q, k, v, p, o, bias, scale: float, rows: int) -> None:
        for key, t in (("q", q), ("k", k), ("p", p), ("v", v)):
            hm = t.detach().abs().amax(dim=(0, 2, 3))
            point.head_max[key] = hm if key not in point.head_max else torch.maximum(point.head_max[key], hm)
        bsel = self._rand(q.shape[0], rows)
        qsel = self._rand(q.shape[2], self.cfg.query_rows)
        b_ = None if bias is None else bias.detach()[:, qsel]
        point.x.append((q.detach()[bsel][:, :, qsel], k.detach()[bsel], v.detach()[bsel]))
        point.extra.append((b_, scale))
        point.o.append(o.detach()[bsel][:, :, qsel])
        self._grad_into(point, o, lambda g: g[bsel][:, :, qsel])

    def _window_attention_forward(self, point: QuantPoint, m: WindowAttention):
        def forward(x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            x = m.norm(x)
            q, k, v = m.qkv(x).view(b, n, m.num_heads, 3 * m.key_dim).permute(0, 2, 1, 3).split(m.key_dim, dim=3)
            bias = m.attention_biases[:, m.attention_bias_idxs]
            p = ((q @ k.transpose(-2, -1)) * m.scale + bias).softmax(dim=-1)
            o = p @ v
            self._record_attention(point, q, k, v, p, o, bias, m.scale, self.cfg.windows_per_call)
            return m.proj(o.transpose(1, 2).reshape(b, n, -1))
        return forward

    def _attend(self, point: QuantPoint, m: Attention):
        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            scale = 1.0 / (q.shape[-1] ** 0.5)
            p = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)
            o = p @ v
            self._record_attention(point, q, k, v, p, o, None, scale, self.cfg.decoder_attention_rows)
            b, h, n, c = o.shape
            return m.out_proj(o.transpose(1, 2).reshape(b, n, h * c))
        return attend

    def __enter__(self):
        for pt in self.points:
            m = pt.module
            if pt.kind in ("conv", "conv_transpose"):
                self.handles.append(m.register_forward_hook(self._conv_hook(pt)))
            elif pt.kind == "linear":
                self.handles.append(m.register_forward_hook(self._linear_hook(pt)))
            elif isinstance(m, WindowAttention):
                m.forward = self._window_attention_forward(pt, m)
                self.restore.append((m, "forward"))
            else:
                m.attend = self._attend(pt, m)
                self.restore.append((m, "attend"))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        for m, attr in self.restore:
            delattr(m, attr)  # drop the instance attribute: the class method is back


# ----------------------------------------------------------------------------- calibration prompts and data
def calibration_prompts(input_size: tuple[int, int], count: int, rng: np.random.Generator):
    """Random single clicks and boxes inside the resized image (input frame) → (points, boxes)."""
    h, w = input_size
    n_points = max(1, count - count // 2)
    n_boxes = count // 2
    coords = np.stack([rng.uniform(0, w, n_points), rng.uniform(0, h, n_points)], axis=1)[:, None, :]
    points = (torch.from_numpy(coords.astype(np.float32)), torch.ones(n_points, 1, dtype=torch.int64))
    boxes = None
    if n_boxes:
        c = np.stack([rng.uniform(0, w, n_boxes), rng.uniform(0, h, n_boxes)], axis=1)
        half = np.stack([rng.uniform(0.05, 0.4) * w * np.ones(n_boxes), rng.uniform(0.05, 0.4) * h * np.ones(n_boxes)], 1)
        b = np.concatenate([np.clip(c - half, 0, [w, h]), np.clip(c + half, 0, [w, h])], axis=1)
        boxes = torch.from_numpy(b.astype(np.float32))
    return points, boxes


def _output_vectors(low_res: torch.Tensor, iou: torch.Tensor, iou_weight: float, gen: torch.Generator):
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
    with _Recorder(points, cfg):
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
                    r_mask, r_iou = _output_vectors(low, iou, cfg.iou_weight, gen)
                    loss = loss + (low * r_mask).sum() + (iou * r_iou).sum()
                loss.backward()
            logger.info("calibration image %d/%d recorded in %.1f s", n + 1, len(images), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- scale search
def _ratios(cfg: CalibrationConfig) -> torch.Tensor:
    """Candidate fractions of the observed range; 1.0 (plain max-abs) is always among them."""
    if cfg.candidates == 1:
        return torch.tensor([1.0])
    return torch.unique(torch.cat([torch.linspace(cfg.min_ratio, cfg.max_ratio, cfg.candidates), torch.ones(1)]))


COARSE_STEP = 5


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


def _weighted_error(y: torch.Tensor, o: torch.Tensor, h: torch.Tensor | None, dims) -> torch.Tensor:
    d = (y - o).square()
    if h is not None:
        d = d * h
    return d.sum(dim=dims)


def _search_layer(pt: QuantPoint, cfg: CalibrationConfig) -> tuple[PointScales, dict]:
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
    ratios = _ratios(cfg)
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
        s_x = grid_search(lambda a: _weighted_error(f(fake_quant(X, a * x_max / INT8_MAX), wq), O, H, None),  # noqa: B023
                          ratios) * x_max / INT8_MAX
        xq = fake_quant(X, s_x)
        if per_channel:
            s_w = grid_search(lambda a: _weighted_error(f(xq, fake_quant_weight(w, a * w_max / INT8_MAX, axis)),  # noqa: B023
                                                        O, H, ch_dims), ratios, len(w_max)) * w_max / INT8_MAX
        else:
            s_w = grid_search(lambda a: _weighted_error(f(xq, fake_quant_weight(w, a * w_max / INT8_MAX, None)),  # noqa: B023
                                                        O, H, None), ratios) * w_max / INT8_MAX
        if has_out:
            y = f(xq, fake_quant_weight(w, s_w, axis))
            o_max = max(pt.o_max, 1e-8)
            s_o = grid_search(lambda a: _weighted_error(fake_quant(y, a * o_max / INT8_MAX), O, H, None),  # noqa: B023
                              ratios) * o_max / INT8_MAX
    y = f(fake_quant(X, s_x), fake_quant_weight(w, s_w, axis))
    if has_out:
        y = fake_quant(y, s_o)
    err = float(_weighted_error(y, O, H, None))
    if cfg.rounds:
        wq0 = fake_quant_weight(w, w_max / INT8_MAX, axis)
        y0 = f(fake_quant(X, torch.tensor(x_max / INT8_MAX)), wq0)
        if has_out:
            y0 = fake_quant(y0, torch.tensor(max(pt.o_max, 1e-8) / INT8_MAX))
        err0 = float(_weighted_error(y0, O, H, None))
    scales = PointScales(pt.kind, s_x.float().numpy(), s_w.float().numpy(), s_o.float().numpy() if has_out else None)
    return scales, {"distortion": err, "distortion_max_abs_scales": err0}


def _attention_output(chunk, extra, s: dict[str, torch.Tensor]) -> torch.Tensor:
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


def _search_attention(pt: QuantPoint, cfg: CalibrationConfig) -> tuple[PointScales, dict]:
    """Per-head alternating search of the q, k, probability and v scales (heads are independent)."""
    ratios = _ratios(cfg)
    top = {"q": INT8_MAX, "k": ACT_B_QMAX, "p": 255, "v": ACT_B_QMAX}
    base = {key: pt.head_max[key].clamp_min(1e-8) / top[key] for key in top}
    s = dict(base)

    def error(sc: dict) -> torch.Tensor:
        total = 0.0
        for chunk, extra, o, h in zip(pt.x, pt.extra, pt.o, pt.h):
            total = total + _weighted_error(_attention_output(chunk, extra, sc), o, h, (0, 2, 3))
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


def calibrate_scales(sam: Sam, images: Sequence[np.ndarray], encoder_nodes: set[str], decoder_nodes: set[str],
                     cfg: CalibrationConfig = CalibrationConfig()) -> tuple[dict[str, PointScales], dict]:
    """The scale search of the module docstring → ({point name: PointScales}, per-point report)."""
    if not images:
        raise ValueError("calibration needs at least one image, got none")
    sam = sam.eval()
    points = quantization_points(sam, encoder_nodes, decoder_nodes)
    t0 = time.perf_counter()
    collect_calibration_data(sam, images, points, cfg)
    t1 = time.perf_counter()
    scales: dict[str, PointScales] = {}
    report: dict[str, dict] = {}
    with torch.no_grad():
        for pt in points:
            if not pt.x:
                raise ValueError(f"quantization point {pt.name} saw no data during calibration")
            sc, info = (_search_attention if pt.kind == "attention" else _search_layer)(pt, cfg)
            scales[pt.name] = sc
            report[pt.name] = {"graph": pt.graph, "kind": pt.kind, **info}
            pt.x, pt.o, pt.h, pt.extra = [], [], [], []  # free memory as we go
    logger.info("calibration: recording %.1f s, search %.1f s over %d points", t1 - t0, time.perf_counter() - t1,
                len(points))
    return scales, report


# ----------------------------------------------------------------------------- images and the artifact
def default_calibration_images() -> list[np.ndarray]:
    """scikit-image's bundled sample photos (`DEFAULT_CALIBRATION_IMAGES`), as H×W×3 uint8 RGB."""
    try:
        import skimage.data
    except ImportError as e:
        raise RuntimeError("the default calibration set needs scikit-image (`pip install scikit-image`); "
                           "or pass --calib with your own images") from e
    from ..image_io import array_to_rgb

    return [array_to_rgb(getattr(skimage.data, name)()) for name in DEFAULT_CALIBRATION_IMAGES]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def calibration_image_paths(sources: Iterable[str | Path], limit: int = 8) -> list[Path]:
    """Files and directories (their images, sorted) → at most `limit` image paths."""
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"calibration source {p} is neither a file nor a directory")
    if not paths:
        raise ValueError(f"no images (expected suffixes {IMAGE_SUFFIXES}) in {list(map(str, sources))}")
    return paths[:limit]


def quantize_model(sam: Sam, images: Sequence[np.ndarray], out_dir: str | Path,
                   cfg: CalibrationConfig = CalibrationConfig(), calibration_names: Sequence[str] = ()) -> Path:
    """Calibrate and write the int8 artifact: the QDQ ONNX graphs (encoder for ONNX Runtime and for OpenVINO,
    decoder), `quantization.json` and the fp32 prompt encoder / mask decoder weights as safetensors (no pickle)."""
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        enc_fp32, dec_fp32 = export_onnx(sam, tmp)
        enc_nodes = {n.name for n in onnx.load(str(enc_fp32), load_external_data=False).graph.node}
        dec_nodes = {n.name for n in onnx.load(str(dec_fp32), load_external_data=False).graph.node}
        scales, report = calibrate_scales(sam, images, enc_nodes, dec_nodes, cfg)
        enc_scales = {k: v for k, v in scales.items() if report[k]["graph"] == "encoder"}
        write_qdq_model(enc_fp32, enc_scales, out / ENCODER_FILE)
        write_qdq_model(enc_fp32, enc_scales, out / OPENVINO_ENCODER_FILE, target="openvino")
        write_qdq_model(dec_fp32, {k: v for k, v in scales.items() if report[k]["graph"] == "decoder"},
                        out / DECODER_FILE)
    meta = artifact_metadata(sam, "int8", fp32_decoder=write_fp32_decoder(sam, out).name,
                             encoder_openvino=OPENVINO_ENCODER_FILE, calibration={
        "config": asdict(cfg), "images": list(calibration_names) or len(images),
        "objective": "diag Gauss-Newton of mask-logit Bernoulli KL + IoU squared error, per-point output error",
        "points": {k: {**report[k], **scales[k].to_json()} for k in scales}})
    write_metadata(out, meta)
    logger.info("wrote int8 artifact to %s", out)
    return out
