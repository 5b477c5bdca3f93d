"""Quantization points: the modules the W8A8 recipe quantizes, each named by the ONNX node its scales go to.

The scales are searched on the PyTorch model but written into the exported graphs, so every point carries the
name the TorchScript ONNX exporter gives its node (`onnx_scope`); a module without a matching node is an error
rather than a silently unquantized layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..modeling.image_encoder_tinyvit import ConvBN, WindowAttention
from ..modeling.sam import Sam
from ..modeling.transformer import Attention


@dataclass
class QuantPoint:
    """One place the graph is quantized; `name` is its ONNX node (or attention scope) name.

    The lists gather the recorder's samples, one entry per forward call: inputs `x`, fp32 outputs `o`, output
    sensitivities `h` (None where no gradient reached), and for attention `extra` (bias, logit scale).
    """

    name: str
    kind: str                # conv, conv_transpose, linear, attention
    module: nn.Module
    graph: str               # "encoder" or "decoder"
    x: list = field(default_factory=list)
    o: list = field(default_factory=list)
    h: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    x_max: float = 0.0
    o_max: float = 0.0
    head_max: dict = field(default_factory=dict)


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
                continue  # the IoU output itself stays fp32 (calibrate's module docstring)
            points.append(QuantPoint(resolve(qual, ("MatMul", "Gemm"), decoder_nodes), "linear", m, "decoder"))
        elif isinstance(m, Attention):
            points.append(QuantPoint(onnx_scope(sam, qual), "attention", m, "decoder"))
    return points
