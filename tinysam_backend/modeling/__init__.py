"""TinySAM network: one module per part of the model (image encoders, prompt encoder, mask decoder), the model
contract every served model meets (`contract`), and the exact low-rank form of the mask decoder that serves clicks
(`lowrank_decoder`)."""

from .contract import PIXEL_MEAN, PIXEL_STD, SamModel, image_to_input, normalize_and_pad, resized_input
from .registry import VARIANTS, ModelConfig, build_sam
from .sam import Sam

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "VARIANTS", "ModelConfig", "Sam", "SamModel", "build_sam", "image_to_input",
           "normalize_and_pad", "resized_input"]
