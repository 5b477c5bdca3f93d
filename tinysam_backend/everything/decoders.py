"""Decoding many single-point prompts on one image embedding.

A point decoder takes (B, 2) XY points in the model's input frame (float64) and returns a `DecodedPrompts`:
the predicted IoUs of the three masks of every prompt, and the low-res logits of the masks asked for.
Asking for logits separately lets the fast decoder run the mask heads only for masks that pass the IoU filter.

- `ModelPointDecoder`: calls `model.decode` (any model with the protocol, e.g. a quantized one);
- `LowRankDecoder` (../lowrank_decoder.py): fp32 `Sam` only, image-side work done once per image.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)


class DecodedPrompts(Protocol):
    iou: np.ndarray  # (B, 3) float32

    def low_res(self, flat_index: np.ndarray) -> torch.Tensor:
        """(K, 256, 256) float32 logits of masks `flat_index` (= prompt * 3 + mask)."""


class PointDecoder(Protocol):
    def __call__(self, points: np.ndarray) -> DecodedPrompts:
        """(B, 2) float64 XY in the input frame → decoded prompts (one foreground point each)."""


class _AllLogits:
    def __init__(self, low_res: torch.Tensor, iou: torch.Tensor) -> None:
        self.logits = low_res.reshape(-1, *low_res.shape[-2:])
        self.iou = iou.float().cpu().numpy()

    def low_res(self, flat_index: np.ndarray) -> torch.Tensor:
        return self.logits[torch.as_tensor(np.asarray(flat_index), dtype=torch.long, device=self.logits.device)]


class ModelPointDecoder:
    """Straightforward decoding: `model.decode` on each batch (every mask's logits are computed)."""

    def __init__(self, model, features: torch.Tensor) -> None:
        self.model = model
        self.features = features

    def __call__(self, points: np.ndarray) -> _AllLogits:
        dev = self.features.device  # the model's device (a CPU engine gives CPU features)
        coords = torch.from_numpy(np.asarray(points, dtype=np.float32)).reshape(-1, 1, 2).to(dev)
        labels = torch.ones((coords.shape[0], 1), dtype=torch.int64, device=dev)
        low_res, iou = self.model.decode(self.features, (coords, labels), None, None)
        return _AllLogits(low_res, iou)


def splits_into_threads(decoder: PointDecoder) -> bool:
    """Whether batches of this decoder run faster side by side in worker threads with one intra-op thread each
    than one after another with all of them: measured so for the low-rank decoder (many small ops); not for
    `model.decode`, whose large activations then contend for memory bandwidth, nor for ONNX Runtime."""
    from ..lowrank_decoder import LowRankDecoder

    return isinstance(decoder, LowRankDecoder) and decoder.ctx.device.type == "cpu"  # on CUDA: one stream


def make_point_decoder(model, features: torch.Tensor, kind: str = "auto", context=None) -> PointDecoder:
    """"fast" → LowRankDecoder (error if the model is not an fp32 `Sam`), "model" → model.decode,
    "auto" → fast when possible. `context`: the image's prebuilt `ImageContext` (from `Predictor.embed`), if any."""
    from ..lowrank_decoder import LowRankDecoder, unsupported_reason

    if kind == "model":
        return ModelPointDecoder(model, features)
    reason = unsupported_reason(model)
    if reason is None:
        return LowRankDecoder(model, features, context)
    if kind == "fast":
        raise ValueError(f"decoder='fast' needs an fp32 Sam model: {reason}")
    logger.info("fast decoder not usable (%s); using model.decode", reason)
    return ModelPointDecoder(model, features)
