"""Model variants as data, and the builder that turns a variant name into a `Sam`.

`vit_t` is TinySAM (TinyViT-5M, same architecture as MobileSAM); `vit_b`/`vit_l`/`vit_h` are SAM's
encoders, the teachers of distillation. `tiny_test` variants build small random models for unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .image_encoder_tinyvit import TinyViTImageEncoder
from .image_encoder_vit import ViTImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer


@dataclass(frozen=True)
class TinyViTConfig:
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14


@dataclass(frozen=True)
class DecoderConfig:
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8


@dataclass(frozen=True)
class ModelConfig:
    """One variant. `encoder` is a TinyViTConfig or a ViTConfig."""

    name: str
    encoder: TinyViTConfig | ViTConfig
    image_size: int = 1024
    embed_dim: int = 256
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def embedding_size(self) -> int:
        return self.image_size // 16


VARIANTS: dict[str, ModelConfig] = {
    "vit_t": ModelConfig("vit_t", TinyViTConfig()),
    "vit_b": ModelConfig("vit_b", ViTConfig(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": ModelConfig("vit_l", ViTConfig(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": ModelConfig("vit_h", ViTConfig(1280, 32, 16, (7, 15, 23, 31))),
    # Small random models for tests and for distillation smoke runs (not loadable from official files).
    "tiny_test_t": ModelConfig("tiny_test_t", TinyViTConfig((16, 16, 24, 32), (1, 1, 1, 1), (1, 2, 2, 2), (7, 7, 7, 7)),
                               image_size=256, embed_dim=32, decoder=DecoderConfig(2, 64, 2)),
    "tiny_test_b": ModelConfig("tiny_test_b", ViTConfig(48, 2, 2, (1,), 4), image_size=256, embed_dim=32,
                               decoder=DecoderConfig(2, 64, 2)),
}


def build_sam(variant: str | ModelConfig) -> Sam:
    """A randomly initialised model of `variant` (a name in VARIANTS or a ModelConfig), in eval mode."""
    cfg = variant if isinstance(variant, ModelConfig) else VARIANTS.get(variant)
    if cfg is None:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {sorted(VARIANTS)}")
    enc = cfg.encoder
    if isinstance(enc, TinyViTConfig):
        image_encoder = TinyViTImageEncoder(cfg.image_size, enc.embed_dims, enc.depths, enc.num_heads,
                                            enc.window_sizes, out_chans=cfg.embed_dim)
    else:
        image_encoder = ViTImageEncoder(cfg.image_size, 16, enc.embed_dim, enc.depth, enc.num_heads,
                                        enc.global_attn_indexes, enc.window_size, out_chans=cfg.embed_dim)
    grid = cfg.embedding_size
    prompt_encoder = PromptEncoder(cfg.embed_dim, (grid, grid), (cfg.image_size, cfg.image_size), 16)
    transformer = TwoWayTransformer(cfg.decoder.depth, cfg.embed_dim, cfg.decoder.num_heads, cfg.decoder.mlp_dim, 2)
    decoder = MaskDecoder(cfg.embed_dim, 3, 3, cfg.embed_dim, transformer)
    return Sam(image_encoder, prompt_encoder, decoder, variant=cfg.name).eval()
