"""Decoding many single-point prompts on one image embedding.

A point decoder takes (B, 2) XY points in the model's input frame (float64) and returns a `DecodedPrompts`:
the predicted IoUs of the three masks of every prompt, and the low-res logits of the masks asked for.
Asking for logits separately lets the fast decoder run the mask heads only for masks that pass the IoU filter.

- `ModelPointDecoder`: calls `model.decode` (any model with the contract `modeling.SamModel`, e.g. a quantized one);
- `LowRankPointDecoder`: the exact low-rank decoder (`modeling/lowrank_decoder.py`), fp32 `Sam` only, image-side
  work done once per image; only the IoU token goes through the last attention at first, the mask tokens and the
  upscaling heads run later for the prompts whose masks are asked for.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

from ..modeling.contract import SamModel
from ..modeling.lowrank_decoder import HEAD_CHUNK, ImageContext, ImageTokens, LowRankDecoder, unsupported_reason

logger = logging.getLogger(__name__)


class DecodedPrompts(Protocol):
    iou: np.ndarray  # (B, 3) float32

    def low_res(self, flat_index: np.ndarray, rows: int | None = None) -> torch.Tensor:
        """(K, R, 256) float32 logits of masks `flat_index` (= prompt * 3 + mask): R = 256, or with `rows` at least
        the first `rows` rows (a decoder may skip the rows below, which the caller's crop never reads)."""


class PointDecoder(Protocol):
    name: str  # what `EverythingResult.timings["decoder"]` reports

    def __call__(self, points: np.ndarray) -> DecodedPrompts:
        """(B, 2) float64 XY in the input frame → decoded prompts (one foreground point each)."""


class _AllLogits:
    def __init__(self, low_res: torch.Tensor, iou: torch.Tensor) -> None:
        self.logits = low_res.reshape(-1, *low_res.shape[-2:])
        self.iou = iou.float().cpu().numpy()

    def low_res(self, flat_index: np.ndarray, rows: int | None = None) -> torch.Tensor:
        return self.logits[torch.as_tensor(np.asarray(flat_index), dtype=torch.long, device=self.logits.device)]


class ModelPointDecoder:
    """Straightforward decoding: `model.decode` on each batch (every mask's logits are computed)."""

    name = "ModelPointDecoder"

    def __init__(self, model: SamModel, features: torch.Tensor) -> None:
        self.model = model
        self.features = features

    def __call__(self, points: np.ndarray) -> _AllLogits:
        dev = self.features.device  # the model's device (a CPU engine gives CPU features)
        coords = torch.from_numpy(np.asarray(points, dtype=np.float32)).reshape(-1, 1, 2).to(dev)
        labels = torch.ones((coords.shape[0], 1), dtype=torch.int64, device=dev)
        low_res, iou = self.model.decode(self.features, (coords, labels), None, None)
        return _AllLogits(low_res, iou)


class _LowRankPrompts:
    """Decoded single-point prompts of `LowRankPointDecoder`: IoUs now, mask logits on demand."""

    def __init__(self, decoder: LowRankDecoder, queries: torch.Tensor, point_embedding: torch.Tensor,
                 tok: ImageTokens, iou: torch.Tensor) -> None:
        self.decoder = decoder
        self.queries = queries
        self.point_embedding = point_embedding
        self.tok = tok
        self.iou = iou.float().cpu().numpy()

    def low_res(self, flat_index: np.ndarray, rows: int | None = None) -> torch.Tensor:
        flat_index = np.asarray(flat_index, dtype=np.int64)
        prompts, inverse = np.unique(flat_index // 3, return_inverse=True)
        mask_tokens = list(range(2, 1 + self.decoder.model.mask_decoder.num_mask_tokens))
        out = []
        with torch.inference_mode():
            for start in range(0, len(prompts), HEAD_CHUNK):
                sel = torch.as_tensor(prompts[start:start + HEAD_CHUNK], device=self.decoder.ctx.device)
                tok = self.tok.take(sel)
                hs = self.decoder.final(self.queries[sel][:, mask_tokens], self.point_embedding[sel][:, mask_tokens], tok)
                out.append(self.decoder.masks(self.decoder.hypernetworks(hs), tok, rows))
            masks = torch.cat(out)
            masks = masks.reshape(-1, *masks.shape[-2:])  # (P·3, R, 256)
        return masks[torch.as_tensor(inverse.reshape(-1) * 3 + flat_index % 3, device=masks.device)]


class LowRankPointDecoder(LowRankDecoder):
    """The low-rank decoder (`modeling.lowrank_decoder`) as a `PointDecoder`; `decode` stays available."""

    name = "LowRankDecoder"

    def __call__(self, points: np.ndarray) -> _LowRankPrompts:
        """(B, 2) XY input-frame points, one foreground point per prompt → IoUs now, mask logits on demand.

        Only the IoU token goes through the last attention here; the mask tokens do in `low_res`, for the prompts
        whose masks are asked for."""
        with torch.inference_mode():
            dev = self.ctx.device
            coords = torch.from_numpy(np.asarray(points, dtype=np.float64)).reshape(-1, 1, 2).to(dev)
            labels = torch.ones((coords.shape[0], 1), dtype=torch.int64, device=dev)
            sparse, _ = self.model.prompt_encoder((coords, labels), None, None)
            queries, point_embedding, tok = self.layers(sparse)
            iou_token = self.final(queries[:, :1], point_embedding[:, :1], tok)
            iou = self.model.mask_decoder.iou_prediction_head(iou_token[:, 0])[:, 1:]
        return _LowRankPrompts(self, queries, point_embedding, tok, iou)


def splits_into_threads(decoder: PointDecoder) -> bool:
    """Whether batches of this decoder run faster side by side in worker threads with one intra-op thread each
    than one after another with all of them: measured so for the low-rank decoder (many small ops); not for
    `model.decode`, whose large activations then contend for memory bandwidth, nor for ONNX Runtime."""
    return isinstance(decoder, LowRankDecoder) and decoder.ctx.device.type == "cpu"  # on CUDA: one stream


def make_point_decoder(model: SamModel, features: torch.Tensor, kind: str = "auto",
                       context: ImageContext | None = None) -> PointDecoder:
    """"fast" → LowRankPointDecoder (error if the model is not an fp32 `Sam`), "model" → model.decode,
    "auto" → fast when possible. `context`: the image's prebuilt `ImageContext` (from `Predictor.embed`), if any."""
    if kind == "model":
        return ModelPointDecoder(model, features)
    reason = unsupported_reason(model)
    if reason is None:
        return LowRankPointDecoder(model, features, context)
    if kind == "fast":
        raise ValueError(f"decoder='fast' needs an fp32 Sam model: {reason}")
    logger.info("fast decoder not usable (%s); using model.decode", reason)
    return ModelPointDecoder(model, features)
