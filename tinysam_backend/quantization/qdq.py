"""Writing int8 QDQ graphs: an fp32 ONNX graph plus our scales → a graph ONNX Runtime runs in int8.

Scales come from `calibrate.calibrate_scales`; this module only rewrites the graph (no search, no torch).
Quantization points are named by the ONNX node they quantize (`/image_encoder/layers.1/blocks.0/attn/qkv/MatMul`,
…); `QuantScales` holds, per point:

- `conv` (Conv) and `conv_transpose` (ConvTranspose): input scale (per tensor), weight scales (per output
  channel), output scale (per tensor). Input, weight and output get QuantizeLinear/DequantizeLinear pairs
  and the bias becomes int32 with scale input × weight, the pattern ONNX Runtime fuses into QLinearConv.
- `linear` (MatMul with a weight, and Gemm): input scale and one weight scale (per layer). ONNX Runtime
  fuses DQ → MatMul into MatMulIntegerToFloat (int8 GEMM, float output, bias added in fp32).
- `attention` (the two activation × activation MatMuls of one attention module): per-head scales for
  q, kᵀ, the softmax probabilities and v. Written as per-axis QuantizeLinear → MatMulInteger (int32) →
  Cast → Mul by the per-head product of scales: real int8 products with per-head scales, which the
  per-tensor QDQ fusion cannot express. Probabilities are non-negative, so they use uint8 with zero
  point 0 (same symmetric quantizer, one more bit); kᵀ and v use a 7-bit range (see ACT_B_QMAX).

Everything else stays in fp32 (see `calibrate` for which and why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

INT8_MAX = 127
# Second operand (kᵀ, v) of the activation × activation products: 7-bit range. ONNX Runtime's x86 AVX2 uint8 ×
# int8 kernel (vpmaddubsw) adds pairs of products in int16 with saturation: with full-range operands
# (255 · 127 · 2 > 32767) MatMulInteger was off by 31 % of its range here; with |b| <= 64 it is exact.
# (Conv / linear weights are packed by ORT's QLinearConv / MatMulIntegerToFloat kernels and stay 8-bit.)
ACT_B_QMIN, ACT_B_QMAX = -64, 63


@dataclass
class PointScales:
    """Scales of one quantization point (see module docstring); arrays are float32."""

    kind: str
    input: np.ndarray | None = None          # (), or per-head (H,) for attention q
    weight: np.ndarray | None = None         # (Cout,) conv, () linear
    output: np.ndarray | None = None         # () conv output
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # attention: "k", "p", "v" per head

    def to_json(self) -> dict:
        d = {"kind": self.kind}
        for key in ("input", "weight", "output"):
            v = getattr(self, key)
            if v is not None:
                d[key] = np.asarray(v, np.float32).ravel().tolist()
        for key, v in self.extra.items():
            d[key] = np.asarray(v, np.float32).ravel().tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> PointScales:
        def arr(key):
            return None if key not in d else np.asarray(d[key], np.float32)
        extra = {k: np.asarray(v, np.float32) for k, v in d.items() if k not in ("kind", "input", "weight", "output")}
        return cls(d["kind"], arr("input"), arr("weight"), arr("output"), extra)


def quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 weights: round(w / s) clipped to ±127; `scale` per channel along `axis` or scalar."""
    s = np.asarray(scale, np.float32)
    if axis is not None and s.ndim == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return np.clip(np.round(w / s), -INT8_MAX, INT8_MAX).astype(np.int8)


class _GraphEditor:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted before the named node
        self.after: dict[str, list[onnx.NodeProto]] = {}      # inserted after the named node
        self.counter = 0
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def uid(self, base: str) -> str:
        self.counter += 1
        return f"{base}__q{self.counter}"

    def const(self, name: str, arr: np.ndarray) -> str:
        name = self.uid(name)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qdq_activation(self, node: onnx.NodeProto, tensor: str, scale: np.ndarray, dtype=np.int8,
                       axis: int | None = None) -> str:
        """QuantizeLinear → DequantizeLinear on `tensor`, placed before `node`; returns the dequantized name."""
        s = self.const(tensor + "_scale", np.asarray(scale, np.float32))
        zp = self.const(tensor + "_zp", np.zeros(np.shape(scale), dtype))
        q, dq = self.uid(tensor + "_q"), self.uid(tensor + "_dq")
        kw = {} if axis is None else {"axis": axis}
        self.new_nodes.setdefault(node.name, []).extend([
            helper.make_node("QuantizeLinear", [tensor, s, zp], [q], name=q, **kw),
            helper.make_node("DequantizeLinear", [q, s, zp], [dq], name=dq, **kw)])
        return dq

    def dq_weight(self, node: onnx.NodeProto, w_name: str, w_int8: np.ndarray, scale: np.ndarray,
                  axis: int | None, zp_dtype=np.int8) -> str:
        s = self.const(w_name + "_scale", np.asarray(scale, np.float32))
        zp = self.const(w_name + "_zp", np.zeros(np.shape(scale), zp_dtype))
        wq = self.const(w_name + "_int", w_int8)
        dq = self.uid(w_name + "_dq")
        kw = {} if axis is None else {"axis": axis}
        self.new_nodes.setdefault(node.name, []).append(
            helper.make_node("DequantizeLinear", [wq, s, zp], [dq], name=dq, **kw))
        return dq

    def weight(self, name: str) -> np.ndarray:
        if name not in self.inits:
            raise ValueError(f"expected an initializer (weight) named {name!r}, found none")
        return numpy_helper.to_array(self.inits[name])

    def finish(self) -> onnx.ModelProto:
        nodes = []
        for n in self.graph.node:
            nodes.extend(self.new_nodes.get(n.name, []))
            nodes.append(n)
            nodes.extend(self.after.get(n.name, []))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {i for n in self.graph.node for i in n.input}
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        return self.model


def _quantize_conv(ed: _GraphEditor, node: onnx.NodeProto, sc: PointScales) -> None:
    transpose = node.op_type == "ConvTranspose"
    axis = 1 if transpose else 0
    w_name = node.input[1]
    w = ed.weight(w_name)
    s_w = np.broadcast_to(np.asarray(sc.weight, np.float32), (w.shape[axis],)).copy()
    s_x = np.float32(sc.input)
    x_dq = ed.qdq_activation(node, node.input[0], s_x)
    w_dq = ed.dq_weight(node, w_name, quantize_weight(w, s_w, axis), s_w, axis)
    inputs = [x_dq, w_dq]
    if len(node.input) > 2 and node.input[2]:
        b = ed.weight(node.input[2])
        s_b = (s_x * s_w).astype(np.float32)
        b_int = np.clip(np.round(b / s_b), -2**31, 2**31 - 1).astype(np.int32)
        inputs.append(ed.dq_weight(node, node.input[2], b_int, s_b, 0, zp_dtype=np.int32))
    del node.input[:]
    node.input.extend(inputs)
    if sc.output is not None:
        y = node.output[0]
        y_raw = ed.uid(y + "_fp")
        node.output[0] = y_raw
        s = ed.const(y + "_scale", np.asarray(sc.output, np.float32))
        zp = ed.const(y + "_zp", np.zeros((), np.int8))
        q = ed.uid(y + "_q")
        ed.after.setdefault(node.name, []).extend([
            helper.make_node("QuantizeLinear", [y_raw, s, zp], [q], name=q),
            helper.make_node("DequantizeLinear", [q, s, zp], [y], name=ed.uid(y + "_dq"))])


def _quantize_linear(ed: _GraphEditor, node: onnx.NodeProto, sc: PointScales) -> None:
    w_name = node.input[1]
    w = ed.weight(w_name)
    s_w = np.float32(sc.weight)
    x_dq = ed.qdq_activation(node, node.input[0], np.float32(sc.input))
    w_dq = ed.dq_weight(node, w_name, quantize_weight(w, s_w, None), s_w, None)
    node.input[0] = x_dq
    node.input[1] = w_dq


def _head_quant(ed: _GraphEditor, node: onnx.NodeProto, tensor: str, scale: np.ndarray, dtype, zero: int,
                clip: tuple[int, int] | None = None) -> str:
    s = ed.const(tensor + "_scale", np.asarray(scale, np.float32))
    zp = ed.const(tensor + "_zp", np.full(np.shape(scale), zero, dtype))
    q = ed.uid(tensor + "_q")
    src = tensor
    if clip is not None:  # clamp to clip · scale per head (Min/Max broadcast; Clip takes scalars only)
        per_head = np.asarray(scale, np.float32).reshape(1, -1, 1, 1)
        lo, hi = ed.const(tensor + "_lo", clip[0] * per_head), ed.const(tensor + "_hi", clip[1] * per_head)
        mn, mx = ed.uid(tensor + "_min"), ed.uid(tensor + "_max")
        ed.new_nodes.setdefault(node.name, []).extend([
            helper.make_node("Min", [tensor, hi], [mn], name=mn), helper.make_node("Max", [mn, lo], [mx], name=mx)])
        src = mx
    ed.new_nodes.setdefault(node.name, []).append(
        helper.make_node("QuantizeLinear", [src, s, zp], [q], name=q, axis=1))
    return q


def _quantize_head_matmul(ed: _GraphEditor, node: onnx.NodeProto, s_a: np.ndarray, s_b: np.ndarray,
                          a_signed: bool) -> None:
    """MatMul(A, B) on (B, H, ·, ·) tensors → MatMulInteger with per-head scales (axis 1).

    A signed (q) is stored as uint8 with zero point 128 — the same symmetric int8 grid shifted, because ONNX
    Runtime's x86 kernels are fast for uint8 × int8 and several times slower for int8 × int8. A non-negative
    (softmax probabilities) is uint8 with zero point 0.
    """
    zero = 128 if a_signed else 0
    a_q = _head_quant(ed, node, node.input[0], s_a, np.uint8, zero)
    b_q = _head_quant(ed, node, node.input[1], s_b, np.int8, 0, clip=(ACT_B_QMIN, ACT_B_QMAX))
    y = node.output[0]
    y32, yf = ed.uid(y + "_int32"), ed.uid(y + "_float")
    prod = ed.const(y + "_rescale", (np.asarray(s_a, np.float32) * np.asarray(s_b, np.float32)).reshape(1, -1, 1, 1))
    inputs = [a_q, b_q]
    if zero:
        inputs.append(ed.const(y + "_a_zp", np.array(zero, np.uint8)))
    node.op_type = "MatMulInteger"
    del node.input[:]
    node.input.extend(inputs)
    node.output[0] = y32
    ed.after.setdefault(node.name, []).extend([
        helper.make_node("Cast", [y32], [yf], name=ed.uid(y + "_cast"), to=TensorProto.FLOAT),
        helper.make_node("Mul", [yf, prod], [y], name=ed.uid(y + "_mul"))])


def attention_matmul_nodes(graph: onnx.GraphProto, scope: str) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The q·kᵀ and probabilities·v MatMuls directly in an attention module's scope (in graph order)."""
    found = [n for n in graph.node if n.op_type == "MatMul" and n.name.startswith(scope + "/")
             and "/" not in n.name[len(scope) + 1:]]
    if len(found) != 2:
        raise ValueError(f"expected 2 activation MatMuls in scope {scope!r}, found {[n.name for n in found]}")
    producers = {o: n.op_type for n in graph.node for o in n.output}
    if producers.get(found[1].input[0]) != "Softmax" or producers.get(found[0].input[0]) == "Mul":
        raise ValueError(f"attention in {scope!r} is not the (q·kᵀ)·scale → softmax → ·v pattern the scales were "
                         f"measured on (first inputs come from {producers.get(found[0].input[0])} and "
                         f"{producers.get(found[1].input[0])})")
    return found[0], found[1]


def _quantize_tensor_matmul(ed: _GraphEditor, node: onnx.NodeProto, s_a: np.ndarray, s_b: np.ndarray,
                            a_unsigned: bool) -> None:
    """MatMul(A, B) of two activations with per-tensor QuantizeLinear → DequantizeLinear on both inputs: the pattern
    OpenVINO's low-precision transformations turn into an int8 MatMul. One scale per tensor, the largest of the
    per-head scales (a coarser grid for the other heads, no clipping); B on the full int8 grid (the 7-bit range is
    a workaround for ONNX Runtime's AVX2 kernel)."""
    a_dq = ed.qdq_activation(node, node.input[0], np.float32(np.max(s_a)), np.uint8 if a_unsigned else np.int8)
    b_dq = ed.qdq_activation(node, node.input[1], np.float32(np.max(s_b)))
    node.input[0] = a_dq
    node.input[1] = b_dq


TARGETS = ("onnxruntime", "openvino")


def write_qdq_model(fp32_path: str | Path, scales: dict[str, PointScales], out_path: str | Path,
                    target: str = "onnxruntime") -> Path:
    """Rewrite the fp32 graph at `fp32_path` with `scales` (point name → PointScales) into `out_path`.

    target "onnxruntime": attention products as MatMulInteger with per-head scales (module docstring), the graph ONNX
    Runtime fuses into int8 kernels. "openvino": the same scales, attention products as per-tensor Q/DQ pairs around
    MatMul (`_quantize_tensor_matmul`), the pattern OpenVINO runs as int8 (MatMulInteger it would run in fp32).
    Convolutions and linear layers are written alike for both.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    model = onnx.load(str(fp32_path))
    ed = _GraphEditor(model)
    by_name = {n.name: n for n in model.graph.node}
    for name, sc in scales.items():
        if sc.kind == "attention":
            qk, pv = attention_matmul_nodes(model.graph, name)
            if target == "openvino":
                _quantize_tensor_matmul(ed, qk, sc.input, sc.extra["k"] * ACT_B_QMAX / INT8_MAX, a_unsigned=False)
                _quantize_tensor_matmul(ed, pv, sc.extra["p"], sc.extra["v"] * ACT_B_QMAX / INT8_MAX, a_unsigned=True)
            else:
                _quantize_head_matmul(ed, qk, sc.input, sc.extra["k"], a_signed=True)
                _quantize_head_matmul(ed, pv, sc.extra["p"], sc.extra["v"], a_signed=False)
            continue
        node = by_name.get(name)
        if node is None:
            raise ValueError(f"quantization point {name!r} names no node of {fp32_path}")
        if sc.kind in ("conv", "conv_transpose"):
            _quantize_conv(ed, node, sc)
        elif sc.kind == "linear":
            _quantize_linear(ed, node, sc)
        else:
            raise ValueError(f"unknown quantization point kind {sc.kind!r} for {name}")
    model = ed.finish()
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    logger.info("wrote int8 QDQ graph %s (%d points)", out_path, len(scales))
    return out_path
