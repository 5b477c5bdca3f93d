"""Symmetric int8 quantize–dequantize in torch: the arithmetic of the QDQ graphs, simulated on calibration data.

The scale search scores each candidate scale by running this arithmetic on recorded activations. It follows the
ONNX operators (round half to even, saturate to the grid), so a scale chosen here behaves the same in the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.image_encoder_tinyvit import ConvBN

INT8_MAX = 127


def fake_quant(x: torch.Tensor, scale: torch.Tensor, lo: int = -128, hi: int = INT8_MAX) -> torch.Tensor:
    """Symmetric quantize-dequantize: clamp(round(x / s), lo, hi) · s (round half to even, as ONNX).

    One new tensor (the quotient), then rounded, clamped and rescaled in place: the scale search calls this on
    every candidate, and the three extra temporaries of the out-of-place form cost as much as the arithmetic."""
    return torch.div(x, scale).round_().clamp_(lo, hi).mul_(scale)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Weights on the symmetric grid [-127, 127]: one scale (`axis` None) or one per index of `axis`."""
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
