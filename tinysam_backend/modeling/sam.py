"""`Sam` composes image encoder, prompt encoder and mask decoder; it holds no per-image state.

It is the PyTorch model of the contract in `contract.py` (`SamModel`), whose preprocessing it shares.
"""

from __future__ import annotations

import torch
from torch import nn

from .contract import normalize_and_pad
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 variant: str = "vit_t") -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.variant = variant

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) resized RGB in 0..255 → normalised and zero-padded to (B, 3, S, S)."""
        return normalize_and_pad(x, self.image_size)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) → image embeddings (B, 256, S/16, S/16)."""
        return self.image_encoder(x)

    def decode(self, image_embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the model's input frame → low-res logits (B, 3, 256, 256), IoU (B, 3)."""
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)
