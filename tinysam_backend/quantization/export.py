"""fp32 ONNX export of TinySAM: the image encoder graph and the prompt-encoder + mask-decoder graph.

Encoder graph `image_encoder.onnx`: `image` (1, 3, S, S) normalised, padded (what `Sam.preprocess` returns)
→ `image_embeddings` (1, 256, S/16, S/16).

Decoder graph `mask_decoder.onnx` (prompt encoder + mask decoder), with a dynamic batch B of prompts:
- `image_embeddings` (1, 256, 64, 64);
- `point_coords` (B, N, 2) XY in the 1024 input frame, `point_labels` (B, N): 1 foreground, 0 background,
  2 box top-left corner, 3 box bottom-right corner, -1 padding ("not a point");
- `mask_input` (B or 1, 1, 256, 256) low-res logits, `has_mask_input` (1,) 1.0 or 0.0;
→ `low_res_logits` (B, 3, 256, 256), `iou_predictions` (B, 3).

`prompts.prompt_to_points` turns the model-API prompts (points / boxes) into that point list exactly as the
PyTorch prompt encoder orders them (points, then the padding point when there is no box, then box corners),
so the graph computes the same sums as `PromptEncoder.forward`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..modeling.sam import Sam
from .runtime import FORMAT_VERSION, FP32_DECODER_FILE, METADATA_FILE

logger = logging.getLogger(__name__)

ENCODER_FILE = "image_encoder.onnx"
DECODER_FILE = "mask_decoder.onnx"
OPSET = 20
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_logits", "iou_predictions")


class ImageEncoderGraph(nn.Module):
    """The image encoder alone (input already normalised and padded)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        from ..modeling.image_encoder_tinyvit import split_first_copy

        self.image_encoder = split_first_copy(sam.image_encoder)  # the module names of `sam`, q/k/v split first

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class PromptDecoderGraph(nn.Module):
    """Prompt encoder + mask decoder with prompts as one labelled point list (see module docstring).

    Module attribute names mirror `Sam` (`prompt_encoder`, `mask_decoder`) so ONNX node scopes carry the
    same module paths as the PyTorch model; the calibration maps its scales onto nodes by those paths.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def embed_labelled_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        h, w = pe.input_image_size
        xy = (coords + 0.5) / torch.tensor([float(w), float(h)], dtype=coords.dtype)
        emb = pe.pe_layer._encode(xy)
        lab = labels[..., None]
        emb = torch.where(lab == -1, pe.not_a_point_embed.weight.expand_as(emb), emb)
        for i, point_embedding in enumerate(pe.point_embeddings):
            emb = emb + (lab == i).to(emb.dtype) * point_embedding.weight
        return emb

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = self.embed_labelled_points(point_coords, point_labels)
        has = has_mask_input.reshape(1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1.0 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.mask_decoder(image_embeddings, pe.get_dense_pe(), sparse, dense)


def _example_decoder_inputs(sam: Sam) -> tuple[torch.Tensor, ...]:
    e = sam.prompt_encoder.image_embedding_size
    m = sam.prompt_encoder.mask_input_size
    c = sam.prompt_encoder.embed_dim
    return (torch.randn(1, c, *e), torch.rand(2, 3, 2) * sam.image_size,
            torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, 3.0]]), torch.zeros(2, 1, *m), torch.zeros(1))


@contextlib.contextmanager
def _quiet_tracer():
    """Silence the tracer's generic warnings (constants, Python booleans, Slice folding): the graphs are checked
    against PyTorch by tests/quantization, and the warnings only alarm the person running `tinysam quantize`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        yield


def export_image_encoder(sam: Sam, path: str | Path) -> Path:
    """Write the fp32 encoder graph (BatchNorm folded into the convolutions by constant folding)."""
    path = Path(path)
    x = torch.zeros(1, 3, sam.image_size, sam.image_size)
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(ImageEncoderGraph(sam.eval()), (x,), str(path), input_names=list(ENCODER_INPUTS),
                          output_names=list(ENCODER_OUTPUTS), opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    logger.info("wrote %s", path)
    return path


def export_mask_decoder(sam: Sam, path: str | Path) -> Path:
    """Write the fp32 prompt-encoder + mask-decoder graph with dynamic prompt batch and point count."""
    path = Path(path)
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(
            PromptDecoderGraph(sam.eval()), _example_decoder_inputs(sam), str(path),
            input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS), opset_version=OPSET,
            dynamo=False, do_constant_folding=True,
            dynamic_axes={"point_coords": {0: "batch", 1: "points"}, "point_labels": {0: "batch", 1: "points"},
                          "mask_input": {0: "mask_batch"}, "low_res_logits": {0: "batch"},
                          "iou_predictions": {0: "batch"}})
    logger.info("wrote %s", path)
    return path


def artifact_metadata(sam: Sam, precision: str, encoder_file: str = ENCODER_FILE,
                      decoder_file: str = DECODER_FILE, **extra) -> dict:
    """The `quantization.json` content read by `runtime.ArtifactInfo`."""
    return {"format_version": FORMAT_VERSION, "precision": precision, "variant": getattr(sam, "variant", "vit_t"),
            "image_size": int(sam.image_size), "mask_input_size": int(sam.prompt_encoder.mask_input_size[0]),
            "encoder": encoder_file, "decoder": decoder_file,
            "encoder_inputs": list(ENCODER_INPUTS), "encoder_outputs": list(ENCODER_OUTPUTS),
            "decoder_inputs": list(DECODER_INPUTS), "decoder_outputs": list(DECODER_OUTPUTS),
            "point_labels": {"background": 0, "foreground": 1, "box_top_left": 2, "box_bottom_right": 3,
                             "padding": -1}, **extra}


def write_fp32_decoder(sam: Sam, out_dir: str | Path) -> Path:
    """The prompt encoder's and mask decoder's fp32 weights (safetensors: data only), which `load_quantized` serves
    with the exact low-rank decoder next to the ONNX image encoder."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in sam.state_dict().items()
             if k.startswith(("prompt_encoder.", "mask_decoder."))}
    path = Path(out_dir) / FP32_DECODER_FILE
    save_file(state, str(path))
    return path


def write_metadata(out_dir: Path, metadata: dict) -> Path:
    path = Path(out_dir) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2))
    return path


def export_onnx(sam: Sam, out_dir: str | Path) -> tuple[Path, Path]:
    """Both fp32 graphs and their `quantization.json` (precision "fp32") into `out_dir`.

    The directory loads with `load_model(out_dir)` (ONNX Runtime fp32) and deploys to other ONNX runtimes.
    Returns (encoder path, decoder path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = export_image_encoder(sam, out / ENCODER_FILE), export_mask_decoder(sam, out / DECODER_FILE)
    write_metadata(out, artifact_metadata(sam, "fp32", fp32_decoder=write_fp32_decoder(sam, out).name))
    return paths
