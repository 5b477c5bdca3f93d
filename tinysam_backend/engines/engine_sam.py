"""`EngineSam`: a `Sam` whose `encode_image` runs on an engine, with every weight still in PyTorch.

The PyTorch image encoder stays in place (`image_encoder`, fp32, CPU for the CPU engines), so the model's state dict,
ONNX export, calibration and distillation see the same module as for a plain `Sam`; only `encode_image` — what
`Predictor.embed` calls — goes to the engine: an OpenVINO / ONNX Runtime compiled graph (`encoder_engine`), or the
PyTorch encoder under fp16/bf16 autocast (`autocast_dtype`). The prompt side is the fp32 PyTorch decoder either way,
and preprocessing is `Sam`'s (`modeling.contract.normalize_and_pad`): an engine's graph takes what `Sam.preprocess`
returns.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.sam import Sam

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class EngineSam(Sam):
    """`Sam` + an engine for the image encoder (module docstring)."""

    def __init__(self, sam: Sam, encoder_engine: nn.Module | None = None, autocast: str | None = None) -> None:
        super().__init__(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, sam.variant)
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {tuple(AUTOCAST_DTYPES)} or None, got {autocast!r}")
        if encoder_engine is not None and autocast is not None:
            raise ValueError("give an encoder engine or an autocast precision, not both")
        self.encoder_engine = encoder_engine  # a module without parameters: the state dict is unchanged
        self.autocast_dtype = None if autocast is None else AUTOCAST_DTYPES[autocast]
        self.engine_info: dict = {}

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) → float32 image embeddings (B, 256, S/16, S/16), on the engine."""
        if self.encoder_engine is not None:
            return self.encoder_engine(x)
        if self.autocast_dtype is None:
            return self.image_encoder(x)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            y = self.image_encoder(x)
        return y.float()
