"""The int8 artifact `tinysam quantize` writes: export fp32 graphs, calibrate, rewrite them as QDQ, add metadata.

A directory of data only — ONNX graphs, `quantization.json` (scales and the calibration report) and the fp32
prompt encoder / mask decoder weights as safetensors — that `runtime.load_quantized` serves without importing
any of the calibration code.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..modeling.sam import Sam
from .calibrate import CalibrationConfig, calibrate_scales
from .export import DECODER_FILE, ENCODER_FILE, artifact_metadata, export_onnx, write_fp32_decoder, write_metadata
from .qdq import write_qdq_model

OPENVINO_ENCODER_FILE = "image_encoder.openvino.onnx"
"""The same scales with Q/DQ placed for OpenVINO's int8 kernels (`qdq.write_qdq_model(target="openvino")`)."""

logger = logging.getLogger(__name__)


def quantize_model(sam: Sam, images: Sequence[np.ndarray], out_dir: str | Path,
                   cfg: CalibrationConfig | None = None, calibration_names: Sequence[str] = ()) -> Path:
    """Calibrate (`cfg`, default: the recipe's `CalibrationConfig()`) and write the int8 artifact: the QDQ ONNX
    graphs (encoder for ONNX Runtime and for OpenVINO, decoder), `quantization.json` and the fp32 prompt encoder /
    mask decoder weights as safetensors (no pickle)."""
    import onnx

    cfg = cfg or CalibrationConfig()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        enc_fp32, dec_fp32 = export_onnx(sam, tmp)
        enc_nodes = {n.name for n in onnx.load(str(enc_fp32), load_external_data=False).graph.node}
        dec_nodes = {n.name for n in onnx.load(str(dec_fp32), load_external_data=False).graph.node}
        scales, report = calibrate_scales(sam, images, enc_nodes, dec_nodes, cfg)
        enc_scales = {k: v for k, v in scales.items() if report[k]["graph"] == "encoder"}
        write_qdq_model(enc_fp32, enc_scales, out / ENCODER_FILE)
        write_qdq_model(enc_fp32, enc_scales, out / OPENVINO_ENCODER_FILE, target="openvino")
        write_qdq_model(dec_fp32, {k: v for k, v in scales.items() if report[k]["graph"] == "decoder"},
                        out / DECODER_FILE)
    meta = artifact_metadata(sam, "int8", fp32_decoder=write_fp32_decoder(sam, out).name,
                             encoder_openvino=OPENVINO_ENCODER_FILE, calibration={
        "config": asdict(cfg), "images": list(calibration_names) or len(images),
        "objective": "diag Gauss-Newton of mask-logit Bernoulli KL + IoU squared error, per-point output error",
        "points": {k: {**report[k], **scales[k].to_json()} for k in scales}})
    write_metadata(out, meta)
    logger.info("wrote int8 artifact to %s", out)
    return out
