"""Configuration: the one place where the environment is read (`Settings.from_env()`, at start-up)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The one default of the pixel limit (`TINYSAM_MAX_IMAGE_PIXELS`); every loader takes the configured value from here.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tinysam"


@dataclass(frozen=True)
class Settings:
    """Process-wide settings.

    checkpoint: `TINYSAM_CHECKPOINT`, a file (fp32 state dict) or a quantized artifact directory.
    cache_dir: `TINYSAM_CACHE_DIR`, where `tinysam weights fetch` stores downloads.
    torch_threads: `TINYSAM_TORCH_THREADS`, intra-op threads (0 = torch's default).
    max_image_pixels: `TINYSAM_MAX_IMAGE_PIXELS`, larger images are refused (decompression bombs).
    quantized_decoder: `TINYSAM_QUANTIZED_DECODER`, the prompt side of a quantized artifact: "auto" (the same as
    "fp32": its fp32 prompt-side weights through the exact low-rank decoder) or "onnx" (its ONNX decoder graph).
    device / engine / precision: `TINYSAM_DEVICE` ("auto", "cpu", "cuda", "cuda:N"), `TINYSAM_ENGINE` ("auto",
    "torch", "openvino", "onnxruntime"), `TINYSAM_PRECISION` ("auto", "fp32", "bf16", "fp16", "int8"): what
    `load_model` runs the model on and with (`tinysam_backend.engines`); "auto" picks by the host's facts.
    max_cpu_isa: `TINYSAM_MAX_CPU_ISA`, else `ONEDNN_MAX_CPU_ISA` (oneDNN's own cap, e.g. "AVX2"): CPU features
    above this level are ignored when "auto" chooses, so an emulated AVX2-only host chooses as a real one would.

    One variable is read before this exists: `TINYSAM_MALLOC_TUNING` (`allocator.py`), which decides whether
    the process re-executes itself with malloc settings before anything else runs.
    """

    checkpoint: str | None = None
    cache_dir: Path = Path.home() / ".cache" / "tinysam"
    torch_threads: int = 0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    quantized_decoder: str = "auto"
    device: str = "auto"
    engine: str = "auto"
    precision: str = "auto"
    max_cpu_isa: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        cache = env.get("TINYSAM_CACHE_DIR")
        return cls(
            checkpoint=env.get("TINYSAM_CHECKPOINT") or None,
            cache_dir=Path(cache) if cache else default_cache_dir(),
            torch_threads=int(env.get("TINYSAM_TORCH_THREADS", "0") or 0),
            max_image_pixels=_max_image_pixels(env.get("TINYSAM_MAX_IMAGE_PIXELS", "")),
            quantized_decoder=env.get("TINYSAM_QUANTIZED_DECODER", cls.quantized_decoder).strip().lower() or "auto",
            device=env.get("TINYSAM_DEVICE", "").strip().lower() or "auto",
            engine=env.get("TINYSAM_ENGINE", "").strip().lower() or "auto",
            precision=env.get("TINYSAM_PRECISION", "").strip().lower() or "auto",
            max_cpu_isa=(env.get("TINYSAM_MAX_CPU_ISA") or env.get("ONEDNN_MAX_CPU_ISA") or "").strip().upper() or None,
        )


def _max_image_pixels(raw: str) -> int:
    """`TINYSAM_MAX_IMAGE_PIXELS`: the one pixel limit of every image loader. It must be one Pillow can honour:
    Pillow refuses images above twice its `MAX_IMAGE_PIXELS` (178,956,970) before anything else sees them."""
    if not raw.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    from .image_io import pillow_pixel_ceiling

    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"TINYSAM_MAX_IMAGE_PIXELS must be an integer number of pixels, got {raw!r}") from None
    ceiling = pillow_pixel_ceiling()
    if value < 1 or (ceiling is not None and value > ceiling):
        raise ValueError(f"TINYSAM_MAX_IMAGE_PIXELS must be between 1 and {ceiling} (Pillow's own ceiling), "
                         f"got {value}")
    return value
