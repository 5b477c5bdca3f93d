"""The predictor: numpy API in original image pixels over the model's torch API in the input frame.

It holds no per-image state: `embed` returns an `ImageEmbedding` value and `predict` takes it back, so one
predictor can be shared by many threads. For an fp32 `Sam` the embedding also carries the decoder's
prompt-independent image side (`modeling.lowrank_decoder.ImageContext`, 41 MiB), and prompts are decoded from it,
about 2× faster than `Sam.decode` and equal to it up to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DEFAULT_MAX_IMAGE_PIXELS
from .errors import PromptError
from .image_io import ImageSource, load_image
from .masks import MASK_THRESHOLD
from .modeling.contract import SamModel, resized_input
from .modeling.lowrank_decoder import ImageContext, LowRankDecoder, unsupported_reason
from .transforms import boxes_to_input, coords_to_input, upscale_logits


def model_device(model: SamModel) -> torch.device:
    """The device of the model's prompt side (and so of its embeddings): CPU for the CPU engines and for models
    without torch weights (ONNX Runtime's `OnnxSam`)."""
    prompt_encoder = getattr(model, "prompt_encoder", None)
    if isinstance(prompt_encoder, torch.nn.Module):
        for p in prompt_encoder.parameters():
            return p.device
    return torch.device("cpu")


@dataclass(frozen=True)
class ImageEmbedding:
    """An encoded image. features: (1, 256, 64, 64); sizes are (H, W); context: the low-rank decoder's image
    side, or None (then prompts go through `model.decode`)."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    context: ImageContext | None = None

    @property
    def nbytes(self) -> int:
        own = self.features.numel() * self.features.element_size()
        return own + (0 if self.context is None else self.context.nbytes)


class Predictor:
    """Wraps a model with the contract `modeling.SamModel`: an fp32 `Sam`, an engine's or a quantized model."""

    def __init__(self, model: SamModel, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 low_rank_decoder: bool = True) -> None:
        self.model = model
        self.max_image_pixels = max_image_pixels
        # Where the model's tensors live (CPU, or "cuda:N" for the torch engine on a GPU): inputs go there, numpy
        # outputs come back from there.
        self.device = model_device(model)
        # The low-rank decoder needs an fp32 `Sam` (not e.g. the ONNX Runtime model of `quantization`).
        self.low_rank_decoder = low_rank_decoder and unsupported_reason(model) is None

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    # ----------------------------------------------------------------- image side
    def prepare(self, image: ImageSource) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Image → (normalised padded (1,3,S,S) tensor, original (H,W), resized (h,w))."""
        rgb = load_image(image, self.max_image_pixels)
        x, input_size = resized_input(rgb, self.image_size, self.device)
        return self.model.preprocess(x), (rgb.shape[0], rgb.shape[1]), input_size

    @torch.inference_mode()
    def embed(self, image: ImageSource) -> ImageEmbedding:
        """Encode an image (H×W×3 uint8 RGB array, PIL image, path or bytes)."""
        x, original, resized = self.prepare(image)
        features = self.model.encode_image(x)
        context = ImageContext(self.model, features) if self.low_rank_decoder else None
        return ImageEmbedding(features, original, resized, context)

    # ---------------------------------------------------------------- prompt side
    def _check_embedding(self, emb: ImageEmbedding) -> None:
        if not isinstance(emb, ImageEmbedding):
            raise TypeError(f"expected an ImageEmbedding from Predictor.embed, got {type(emb).__name__}")

    def prompts_to_input(self, emb: ImageEmbedding, point_coords, point_labels, boxes, mask_input):
        """Validate batched numpy prompts in original pixels and convert them to input-frame tensors."""
        points = None
        batch = None
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_coords and point_labels must be given together")
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] < 1:
                raise PromptError(f"point_coords must be (B, N, 2) with N >= 1, got shape {coords.shape}")
            if labels.shape != coords.shape[:2]:
                raise PromptError(f"point_labels must be (B, N) = {coords.shape[:2]}, got shape {labels.shape}")
            if not np.isfinite(coords).all():
                raise PromptError("point_coords contain NaN or infinity")
            if not np.isin(labels, (0, 1)).all():
                raise PromptError(f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels)}")
            c = coords_to_input(coords, emb.original_size, emb.input_size)
            points = (torch.from_numpy(c), torch.from_numpy(labels.astype(np.int64)))
            batch = coords.shape[0]
        box_t = None
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != 4:
                raise PromptError(f"boxes must be (B, 4) XYXY, got shape {b.shape}")
            if not np.isfinite(b).all():
                raise PromptError("box contains NaN or infinity")
            if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
                raise PromptError(f"box must be X0,Y0,X1,Y1 with X0 <= X1 and Y0 <= Y1, got {b.tolist()}")
            if batch is not None and b.shape[0] != batch:
                raise PromptError(f"{b.shape[0]} boxes for {batch} point prompts")
            box_t = torch.from_numpy(boxes_to_input(b, emb.original_size, emb.input_size))
            batch = b.shape[0]
        mask_t = None
        if mask_input is not None:
            m = np.asarray(mask_input, dtype=np.float32)
            side = self.image_size // 4
            if m.ndim != 4 or m.shape[1:] != (1, side, side):
                raise PromptError(f"mask_input must be (B, 1, {side}, {side}) low-res logits, got shape {m.shape}")
            if batch is not None and m.shape[0] != batch:
                raise PromptError(f"{m.shape[0]} mask inputs for {batch} prompts")
            mask_t = torch.from_numpy(np.ascontiguousarray(m))
            batch = m.shape[0]
        if batch is None:
            raise PromptError("no prompt given: pass point_coords/point_labels, a box, or a mask_input")
        return points, box_t, mask_t

    @torch.inference_mode()
    def predict_batch(self, emb: ImageEmbedding, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      return_masks: bool = True, best_only: bool = False):
        """Many prompts on one image.

        point_coords (B, N, 2) XY original pixels, point_labels (B, N), boxes (B, 4) XYXY, mask_input
        (B, 1, 256, 256). Returns masks (B, 3, H, W) bool or None, scores (B, 3), low-res logits (B, 3, 256, 256).
        best_only: masks and logits of each prompt's highest-scoring mask only, (B, 1, …); scores stay (B, 3).
        """
        self._check_embedding(emb)
        points, box_t, mask_t = self.prompts_to_input(emb, point_coords, point_labels, boxes, mask_input)
        if self.device.type != "cpu":
            points = None if points is None else (points[0].to(self.device), points[1].to(self.device))
            box_t = None if box_t is None else box_t.to(self.device)
            mask_t = None if mask_t is None else mask_t.to(self.device)
        if emb.context is not None and (points is not None or box_t is not None):
            low_res, iou = LowRankDecoder(self.model, context=emb.context).decode(points, box_t, mask_t, best_only)
        else:
            low_res, iou = self.model.decode(emb.features, points, box_t, mask_t)
            if best_only:
                low_res = torch.take_along_dim(low_res, iou.argmax(dim=1)[:, None, None, None], dim=1)
        masks = None
        if return_masks:
            masks = (upscale_logits(low_res, self.image_size, emb.input_size, emb.original_size) > MASK_THRESHOLD)
            masks = masks.cpu().numpy()
        return masks, iou.float().cpu().numpy(), low_res.float().cpu().numpy()

    def predict_best(self, emb: ImageEmbedding, point_coords=None, point_labels=None, boxes=None, mask_input=None):
        """Many prompts on one image → each prompt's best mask of three (highest predicted IoU), in original pixels.

        Prompts as `predict_batch`. Only the chosen mask is upscaled. Returns masks (B, H, W) bool, their predicted
        IoUs (B,) float32, and their low-res logits (B, 256, 256) float32 (the next click's `mask_input`).
        """
        masks, scores, low_res = self.predict_batch(emb, point_coords, point_labels, boxes, mask_input, best_only=True)
        return masks[:, 0], scores.max(axis=1), low_res[:, 0]

    def predict(self, emb: ImageEmbedding, point_coords=None, point_labels=None, box=None,
                mask_input: np.ndarray | None = None):
        """One prompt: point_coords (N, 2) XY original pixels, point_labels (N,) 1 fg / 0 bg, box (4,) XYXY,
        mask_input (1, 256, 256) or (256, 256) logits. Returns masks (3, H, W) bool, scores (3,), low-res (3, 256, 256).
        """
        pc = None if point_coords is None else np.asarray(point_coords, dtype=np.float64)
        pl = None if point_labels is None else np.asarray(point_labels)
        if pc is not None and pc.ndim != 2:
            raise PromptError(f"point_coords must be (N, 2) XY, got shape {pc.shape}")
        if pl is not None and pl.ndim != 1:
            raise PromptError(f"point_labels must be (N,), got shape {pl.shape}")
        bx = None
        if box is not None:
            bx = np.asarray(box, dtype=np.float64)
            if bx.shape != (4,):
                raise PromptError(f"box must be (4,) X0,Y0,X1,Y1, got shape {bx.shape}")
            bx = bx[None]
        mi = None
        if mask_input is not None:
            mi = np.asarray(mask_input, dtype=np.float32)
            if mi.ndim == 2:
                mi = mi[None]
            if mi.ndim != 3 or mi.shape[0] != 1:
                raise PromptError(f"mask_input must be (1, 256, 256) or (256, 256), got shape {np.shape(mask_input)}")
            mi = mi[None]
        masks, scores, low = self.predict_batch(emb, None if pc is None else pc[None], None if pl is None else pl[None],
                                                bx, mi)
        return masks[0], scores[0], low[0]
