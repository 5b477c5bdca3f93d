"""The model contract: what the predictor, the everything mode and the engines ask of a TinySAM model.

Several objects serve TinySAM — `Sam` (PyTorch), `EngineSam` (its image encoder on OpenVINO / ONNX Runtime /
autocast), `HybridSam` (an artifact's ONNX encoder with the fp32 PyTorch decoder) and `OnnxSam` (both graphs in
ONNX Runtime). They share no base class (`OnnxSam` holds no torch weights), so the interface is written once here
as a `typing.Protocol`, `SamModel`, and the callers are typed against it.

Preprocessing is part of the contract and is the same for every model: the image is resized so that its longest
side is the model's input side S (`transforms.resize_image`), normalised with ImageNet's pixel mean and standard
deviation, and zero-padded at the bottom and right to S × S. It is written once, here (`normalize_and_pad`,
`image_to_input`), so that every model, the calibration of the int8 encoder and the distillation data see the
same input bit for bit.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..transforms import resize_image

# ImageNet statistics in 0..255 RGB, as the official checkpoints were trained with.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@runtime_checkable
class SamModel(Protocol):
    """A promptable segmentation model in the model's input frame (S × S pixels, S = `image_size`).

    Coordinates are XY in input-frame pixels; the numpy API in original image pixels is `Predictor`'s.
    """

    @property
    def image_size(self) -> int:
        """S: the side of the square, padded model input (1024 for TinySAM)."""
        ...

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) resized RGB in 0..255 (float32) → normalised and zero-padded to (B, 3, S, S)."""
        ...

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) → image embeddings (B, C, S/16, S/16), float32."""
        ...

    def decode(self, image_embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the input frame on one image embedding (1, C, S/16, S/16) → low-res mask logits
        (B, 3, S/4, S/4) and predicted IoUs (B, 3).

        points: ((B, N, 2) XY, (B, N) labels, 1 foreground / 0 background); boxes: (B, 4) XYXY;
        mask_input: (B, 1, S/4, S/4) low-res logits of an earlier prediction.
        """
        ...


def normalize_and_pad(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """(…, 3, h, w) resized RGB in 0..255 → (x − mean) / std, zero-padded at the bottom and right to (…, 3, S, S).

    h and w must not exceed S = `image_size`."""
    if x.shape[-1] > image_size or x.shape[-2] > image_size:
        raise ValueError(f"image of {x.shape[-2]}x{x.shape[-1]} (HxW) pixels does not fit the model's "
                         f"{image_size}x{image_size} input; resize it first (transforms.resize_image)")
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(-1, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, image_size - x.shape[-1], 0, image_size - x.shape[-2]))


def resized_input(rgb: np.ndarray, image_size: int, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
    """H×W×3 uint8 RGB → (1, 3, h, w) float32 in 0..255, resized so that the longest side is S, on `device`; and
    the resized (h, w) (the input size that maps prompts and masks between the frames)."""
    resized = resize_image(rgb, image_size)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).unsqueeze(0).to(device).to(torch.float32)
    return x, (int(resized.shape[0]), int(resized.shape[1]))


def image_to_input(rgb: np.ndarray, image_size: int, device: torch.device | str | None = None
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
    """H×W×3 uint8 RGB → the model input (1, 3, S, S) (resized, normalised, zero-padded) and the resized (h, w)."""
    x, input_size = resized_input(rgb, image_size, device)
    return normalize_and_pad(x, image_size), input_size
