"""Loading checkpoints safely: state dicts in the official key layout, never pickled modules.

TinySAM (`tinysam_42.3.pth`) and MobileSAM (`mobile_sam.pt`) share one layout (variant `vit_t`); SAM's
`sam_vit_{b,l,h}_*.pth` load as `vit_b`/`vit_l`/`vit_h`. A quantized artifact directory (our own W8A8
export) is recognised by its `quantization.json`. `load_model` runs either on the engine `tinysam_backend.engines`
chooses (device, engine, precision); `load_torch_model` gives the plain fp32 PyTorch model.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import Settings
from .errors import CheckpointError, MissingCheckpointError
from .modeling import VARIANTS, Sam, build_sam

logger = logging.getLogger(__name__)

QUANTIZED_METADATA = "quantization.json"
_WRAPPER_KEYS = ("model", "state_dict", "module")
_VIT_DEPTH_TO_VARIANT = {VARIANTS[v].encoder.depth: v for v in ("vit_b", "vit_l", "vit_h")}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # torch.save writes a zip archive (or, in the legacy format, a pickle: protocol marker 0x80). Anything else is
    # not a checkpoint at all, whatever torch.load's unpickler says about its first byte.
    with path.open("rb") as f:
        head = f.read(2)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a "
                              f"legacy pickle; it starts with {head!r}); expected a state dict .pth/.pt or "
                              ".safetensors file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # a class reference the weights-only unpickler refuses: a pickled object
            raise CheckpointError(
                f"{path} is a pickled Python object (a whole model module), not a state dict; loading it would "
                "run arbitrary code, so it is refused. The official `tinysam_w8a8.pth` is such a file (simulated "
                "quantization). Use the fp32 checkpoint `tinysam_42.3.pth` and produce a real int8 model with "
                "`tinysam quantize --checkpoint tinysam_42.3.pth --out DIR`, then load DIR."
            ) from e
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e)}") from e
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: "
                              f"{_first_line(e)}") from e
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {re.sub(r"^(module\.|model\.)", "", k): v for k, v in obj.items()}


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    for i, line in enumerate(lines):  # torch's weights-only message leads with advice; the reason follows "error:"
        if "WeightsUnpickler error" in line:
            reason = line.split("error:", 1)[1].strip()
            return (reason or (lines[i + 1] if i + 1 < len(lines) else ""))[:200]
    return lines[0][:200] if lines else ""


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Variant name from the keys: TinyViT stages (`vit_t`) or the depth of the ViT encoder."""
    if any(k.startswith("image_encoder.layers.") for k in state_dict):
        return "vit_t"
    depth = {int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    if depth:
        n = max(depth) + 1
        if n in _VIT_DEPTH_TO_VARIANT:
            return _VIT_DEPTH_TO_VARIANT[n]
        raise CheckpointError(f"ViT image encoder with {n} blocks matches no variant (expected 12, 24 or 32)")
    raise CheckpointError("cannot detect the model variant: no `image_encoder.layers.*` (TinyViT) or "
                          "`image_encoder.blocks.*` (ViT) keys; is this a SAM/TinySAM state dict?")


def load_state_dict_checked(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Load strictly; a mismatch raises CheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" … (+{len(items) - 10} more)" if len(items) > 10 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def resolve_checkpoint(checkpoint: str | Path | None, settings: Settings | None = None) -> Path:
    """A path, a manifest name found in `settings.cache_dir`, or `settings.checkpoint` when None → an existing path.

    settings: the process's configuration (`Settings.from_env()` at start-up); None is `Settings()`, the built-in
    defaults (no default checkpoint). This module never reads the environment itself.
    """
    settings = settings or Settings()
    if checkpoint is None:
        checkpoint = settings.checkpoint
    if checkpoint is None:
        raise MissingCheckpointError(
            "no checkpoint configured. Either download the official one with `tinysam weights fetch tinysam_42.3` "
            "(stored under the cache directory, TINYSAM_CACHE_DIR), or point TINYSAM_CHECKPOINT at a local "
            "state dict or quantized artifact directory.")
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path
    for candidate in (settings.cache_dir / path.name, settings.cache_dir / f"{path.name}.pth"):
        if candidate.exists():
            return candidate
    raise MissingCheckpointError(
        f"checkpoint {checkpoint} not found (also looked in {settings.cache_dir}). Download it with "
        f"`tinysam weights fetch NAME` (see `tinysam weights list`), or set TINYSAM_CHECKPOINT to a local file.")


def load_model(checkpoint: str | Path | None = None, variant: str | None = None,
               settings: Settings | None = None, *, device: str | None = None, engine: str | None = None,
               precision: str | None = None):
    """Build the model for a checkpoint, on the engine that runs it fastest here (or the one asked for); eval mode.

    checkpoint: a state dict file (.pth/.pt/.safetensors) in the official layout, a quantized artifact
    directory, or None for `settings.checkpoint`. variant: `vit_t`/`vit_b`/`vit_l`/`vit_h`; detected from the
    keys when None. device: "auto", "cpu", "cuda" or "cuda:N"; engine: "auto", "torch", "openvino" or
    "onnxruntime"; precision: "auto", "fp32", "bf16", "fp16" or "int8" (of the image encoder; the prompt side is
    fp32). None takes `settings` (`TINYSAM_DEVICE`, `TINYSAM_ENGINE`, `TINYSAM_PRECISION` when the caller passes
    `Settings.from_env()`; `Settings()`, the default, is "auto" with no default checkpoint); what
    "auto" picks and why is in `tinysam_backend.engines.selection`. A combination this host cannot run raises
    `EngineError` (nothing falls back silently).

    Returns a `Sam` (an `EngineSam` from a state dict, a `HybridSam` from an artifact, or ONNX Runtime's `OnnxSam`
    with `TINYSAM_QUANTIZED_DECODER=onnx`), with `engine_info`: a dict of device, engine, precision, reason, CPU flags.
    """
    from .engines import HostFacts, build_model, choose

    settings = settings or Settings()
    path = resolve_checkpoint(checkpoint, settings)
    artifact_precision = None
    engine = engine or settings.engine
    if path.is_dir():
        if not (path / QUANTIZED_METADATA).exists():
            raise CheckpointError(f"{path} is a directory without {QUANTIZED_METADATA}; expected a quantized artifact")
        from .quantization.runtime import ArtifactInfo

        artifact_precision = ArtifactInfo.read(path)[0].precision
        if settings.quantized_decoder == "onnx" and engine == "auto":
            engine = "onnxruntime"  # the artifact's ONNX decoder graph is served by ONNX Runtime
    facts = HostFacts.detect(settings.max_cpu_isa)
    choice = choose(device or settings.device, engine, precision or settings.precision, facts, artifact_precision)
    return build_model(path, choice, facts, settings, variant, artifact=artifact_precision is not None)


def load_torch_state(path: str | Path, variant: str | None = None) -> Sam:
    """A state dict file → the fp32 PyTorch `Sam` on the CPU, eval mode (no engine)."""
    path = Path(path)
    state_dict = _read_state_dict(path)
    detected = detect_variant(state_dict)
    if variant is not None and variant != detected:
        if variant not in VARIANTS:
            raise CheckpointError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        logger.warning("variant %s given but the keys look like %s; trying %s", variant, detected, variant)
    model: Sam = build_sam(variant or detected)
    load_state_dict_checked(model, state_dict, str(path))
    logger.info("loaded %s checkpoint %s", model.variant, path)
    return model.eval()


def load_torch_model(checkpoint: str | Path | None = None, variant: str | None = None,
                     settings: Settings | None = None) -> Sam:
    """The fp32 PyTorch `Sam` on the CPU, for callers that need every weight in PyTorch (quantize, ONNX export,
    distillation): no engine; a quantized artifact directory, whose image encoder is an ONNX graph, is refused with a
    clear error."""
    path = resolve_checkpoint(checkpoint, settings)
    if path.is_dir():
        raise CheckpointError(f"{path} is a quantized ONNX artifact; this needs the fp32 state dict (.pth / .pt / "
                              ".safetensors) it was made from")
    return load_torch_state(path, variant)
