"""Serving a TinySAM ONNX artifact (int8 QDQ or fp32) with ONNX Runtime's CPU provider.

`load_quantized(dir)` reads `quantization.json` and the files it names. Callers switch to the int8 model by path
alone (`load_model(dir)`); what they get depends on `decoder`:

- "onnx": `OnnxSam`, both graphs in ONNX Runtime (the W8A8 decoder of an int8 artifact);
- "fp32": `HybridSam`, the ONNX image encoder inside a `Sam` whose prompt encoder and mask decoder carry the
  artifact's fp32 weights, so `Predictor` decodes with the exact low-rank decoder (`lowrank_decoder.py`). On CPUs
  without int8 dot-product instructions it answers a click faster than the int8 graph (benchmarks/
  quantization_bench.py), and with no quantization error on the prompt side;
- "auto" (default, `TINYSAM_QUANTIZED_DECODER`): "fp32".

Every artifact `tinysam quantize` and `tinysam export-onnx` write carries those fp32 weights; a directory from
before they were added is refused when read (`ArtifactInfo.read`), with the advice to re-run `tinysam quantize`.

Both have the model protocol `Predictor` uses (`image_size`, `preprocess`, `encode_image`, `decode`). This is the
serving path: it imports neither the calibration code nor the ONNX exporter, and the artifact holds only ONNX
graphs, JSON and safetensors (no pickle).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..modeling.contract import normalize_and_pad
from ..modeling.sam import Sam
from .prompts import prompt_to_points

logger = logging.getLogger(__name__)

METADATA_FILE = "quantization.json"
FP32_DECODER_FILE = "prompt_decoder.fp32.safetensors"
FORMAT_VERSION = 1
DECODER_CHOICES = ("auto", "fp32", "onnx")


@dataclass(frozen=True)
class ArtifactInfo:
    """What `quantization.json` records. precision: "int8" (W8A8 QDQ) or "fp32" (plain export)."""

    precision: str
    image_size: int
    encoder_file: str
    decoder_file: str
    fp32_decoder_file: str
    mask_input_size: int = 256

    @classmethod
    def read(cls, directory: Path) -> tuple[ArtifactInfo, dict]:
        path = directory / METADATA_FILE
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a readable JSON metadata file: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r} is not supported "
                                  f"(expected {FORMAT_VERSION})")
        if not meta.get("fp32_decoder"):
            raise CheckpointError(f"{directory} is an artifact from an older `tinysam quantize`: its {METADATA_FILE} "
                                  "names no fp32 prompt-encoder / mask-decoder weights ('fp32_decoder'); re-run "
                                  "`tinysam quantize` (or `tinysam export-onnx` for an fp32 export) to rebuild it")
        try:
            info = cls(precision=str(meta["precision"]), image_size=int(meta["image_size"]),
                       encoder_file=str(meta["encoder"]), decoder_file=str(meta["decoder"]),
                       fp32_decoder_file=str(meta["fp32_decoder"]),
                       mask_input_size=int(meta.get("mask_input_size", 256)))
        except KeyError as e:
            raise CheckpointError(f"{path} lacks the key {e.args[0]!r}") from e
        for name in (info.encoder_file, info.decoder_file):
            if Path(name).name != name or not name.endswith(".onnx"):
                raise CheckpointError(f"{path}: graph file must be a plain *.onnx name in the directory, got {name!r}")
        name = info.fp32_decoder_file
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise CheckpointError(f"{path}: fp32_decoder must be a plain *.safetensors name in the directory, "
                                  f"got {name!r}")
        return info, meta


def session_options(intra_op_threads: int = 0):
    """CPU session options: all graph optimisations (QDQ → QLinearConv / MatMulInteger fusions), sequential.

    Worker threads do not spin between runs: in a server (gunicorn threads, FiftyOne) the CPU left idle after a
    request goes to the next one, or to torch, instead of to ONNX Runtime's busy-waiting pool.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


# MatMul + Add → Gemm (with Reshapes) runs before the QDQ fusions and would hide `DQ → MatMul` from them, leaving
# linear layers as fp32 Gemm on dequantized weights; without it they become MatMulIntegerToFloat (int8 GEMM).
DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def create_session(path: Path, so=None):
    """ONNX Runtime CPU session for one graph, with the optimiser settings the int8 graphs need."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), so or session_options(), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def _run_encoder(session, x: torch.Tensor, s: int) -> torch.Tensor:
    if tuple(x.shape) != (1, 3, s, s):
        raise ValueError(f"encode_image expects a (1, 3, {s}, {s}) preprocessed image, got {tuple(x.shape)}")
    arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    (emb,) = session.run(None, {"image": arr})
    return torch.from_numpy(emb)


class OnnxImageEncoder(nn.Module):
    """An ONNX Runtime image-encoder session as a module, so that a `Sam` can hold it."""

    def __init__(self, session, img_size: int) -> None:
        super().__init__()
        self.session = session
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_encoder(self.session, x, self.img_size)


class HybridSam(Sam):
    """The artifact's ONNX image encoder (int8 for `tinysam quantize`) with the fp32 prompt encoder and mask
    decoder: a `Sam`, so that `Predictor` uses the exact low-rank decoder."""

    directory: Path
    info: ArtifactInfo
    metadata: dict

    @property
    def precision(self) -> str:
        """The image encoder's precision ("int8" or "fp32"); the prompt side is fp32."""
        return self.info.precision


class OnnxSam:
    """TinySAM served from ONNX graphs; same protocol as `Sam` (see `tinysam_backend.predictor`).

    ONNX Runtime sessions are safe to call from several threads; this object holds no per-image state.
    """

    def __init__(self, directory: str | Path, intra_op_threads: int = 0) -> None:

        self.directory = Path(directory)
        self.info, self.metadata = ArtifactInfo.read(self.directory)
        so = session_options(intra_op_threads)
        self.encoder = create_session(self.directory / self.info.encoder_file, so)
        self.decoder = create_session(self.directory / self.info.decoder_file, so)
        self._no_mask = np.zeros((1, 1, self.info.mask_input_size, self.info.mask_input_size), np.float32)
        self.variant = self.metadata.get("variant", "vit_t")
        logger.info("loaded %s ONNX TinySAM from %s", self.info.precision, self.directory)

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def precision(self) -> str:
        return self.info.precision

    def eval(self) -> OnnxSam:
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) resized RGB in 0..255 → normalised and zero-padded to (B, 3, S, S)."""
        return normalize_and_pad(x, self.image_size)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (1, 3, S, S) → image embeddings (1, 256, S/16, S/16)."""
        return _run_encoder(self.encoder, x, self.image_size)

    def decode(self, image_embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the input frame → low-res logits (B, 3, 256, 256), IoU (B, 3) (as `Sam.decode`)."""
        if image_embeddings.shape[0] != 1:
            raise ValueError(f"decode expects one image embedding (1, 256, 64, 64), got {tuple(image_embeddings.shape)}")
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif mask_input is not None:
            batch = mask_input.shape[0]
        else:
            batch = 1
        pts = None if points is None else (points[0].cpu().numpy(), points[1].cpu().numpy())
        coords, labels = prompt_to_points(pts, None if boxes is None else boxes.cpu().numpy(), batch)
        if mask_input is None:
            mask, has = self._no_mask, np.zeros(1, np.float32)
        else:
            mask, has = np.ascontiguousarray(mask_input.cpu().numpy(), dtype=np.float32), np.ones(1, np.float32)
        feeds = {"image_embeddings": np.ascontiguousarray(image_embeddings.cpu().numpy(), dtype=np.float32),
                 "point_coords": coords, "point_labels": labels, "mask_input": mask, "has_mask_input": has}
        low_res, iou = self.decoder.run(None, feeds)
        return torch.from_numpy(low_res), torch.from_numpy(iou)


def load_quantized(directory: str | Path, intra_op_threads: int = 0, decoder: str = "auto") -> OnnxSam | HybridSam:
    """Load an artifact directory written by `tinysam quantize` (int8) or `tinysam export-onnx` (fp32); `decoder`
    as the module docstring says."""
    directory = Path(directory)
    if decoder not in DECODER_CHOICES:
        raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {decoder!r}")
    if not (directory / METADATA_FILE).is_file():
        raise CheckpointError(f"{directory} has no {METADATA_FILE}; expected a directory written by "
                              "`tinysam quantize` or `tinysam export-onnx`")
    info, meta = ArtifactInfo.read(directory)
    if decoder == "onnx":
        return OnnxSam(directory, intra_op_threads)
    encoder = OnnxImageEncoder(create_session(directory / info.encoder_file, session_options(intra_op_threads)),
                               info.image_size)
    return _load_hybrid(directory, info, meta, encoder)


def load_with_encoder(directory: str | Path, encoder: nn.Module) -> HybridSam:
    """The artifact's fp32 prompt encoder / mask decoder around `encoder` (any module mapping the preprocessed
    (1, 3, S, S) image to the embedding, e.g. the artifact's graph compiled by another runtime)."""
    directory = Path(directory)
    info, meta = ArtifactInfo.read(directory)
    return _load_hybrid(directory, info, meta, encoder)


def _load_hybrid(directory: Path, info: ArtifactInfo, meta: dict, encoder: nn.Module) -> HybridSam:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..modeling.registry import build_sam

    path = directory / info.fp32_decoder_file
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    base = build_sam(meta.get("variant", "vit_t"))
    model = HybridSam(encoder, base.prompt_encoder, base.mask_decoder, base.variant)
    expected = {k for k in model.state_dict() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit the {base.variant} decoder: {e}") from e
    model.directory, model.info, model.metadata = directory, info, meta
    logger.info("loaded %s image encoder (%s) + fp32 decoder from %s", info.precision, type(encoder).__name__,
                directory)
    return model.eval()
