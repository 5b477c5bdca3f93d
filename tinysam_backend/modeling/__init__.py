"""TinySAM network: one module per part of the model (image encoders, prompt encoder, mask decoder)."""

from .registry import VARIANTS, ModelConfig, build_sam
from .sam import Sam

__all__ = ["VARIANTS", "ModelConfig", "Sam", "build_sam"]
