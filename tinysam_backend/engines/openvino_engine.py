"""OpenVINO on the CPU for the image encoder: fp32, bf16 (`INFERENCE_PRECISION_HINT`) and int8 QDQ graphs.

The graph is an ONNX image encoder (`quantization/export.py` layout: `image` (1, 3, S, S) normalised and padded →
`image_embeddings` (1, 256, S/16, S/16)): the fp32 export of a state dict converted to OpenVINO IR once
(`graph_cache`), or an int8 artifact's QDQ graph, whose QuantizeLinear/DequantizeLinear pairs OpenVINO turns into
FakeQuantize and runs as int8 convolutions and matrix products (check with `runtime_precisions`).

`OpenVINOImageEncoder` is an `nn.Module`, so a `Sam` holds it in place of its PyTorch encoder and the prompt side
stays the exact fp32 low-rank decoder. Infer requests come from a pool, one per concurrent caller: a compiled model is
shared by threads, an infer request is not.
"""

from __future__ import annotations

import collections
import logging
import queue
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

IR_FILE = "image_encoder.xml"
PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the graph's FakeQuantize set it; rest f32
_COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def onnx_to_ir(onnx_path: str | Path, out_dir: str | Path) -> Path:
    """Convert an ONNX encoder graph to OpenVINO IR (`image_encoder.xml` + `.bin`, weights kept fp32)."""
    import openvino as ov

    xml = Path(out_dir) / IR_FILE
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def compile_encoder(graph: str | Path, precision: str, threads: int = 0, cache_dir: str | Path | None = None,
                    profile: bool = False):
    """Compile an encoder graph (ONNX or IR) for the CPU. precision: "fp32", "bf16" or "int8" (the graph's own).
    profile: collect per-layer times (`PERF_COUNT`, read by `layer_profile`); off for serving."""
    import openvino as ov

    if precision not in PRECISION_HINT:
        raise ValueError(f"OpenVINO precision must be one of {tuple(PRECISION_HINT)}, got {precision!r}")
    core = ov.Core()
    if cache_dir is not None:
        core.set_property({"CACHE_DIR": str(cache_dir)})  # compiled kernels: later processes start faster
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "INFERENCE_PRECISION_HINT": PRECISION_HINT[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if profile:
        config["PERF_COUNT"] = "YES"
    return core.compile_model(str(graph), "CPU", config)


def runtime_precisions(compiled) -> collections.Counter:
    """(layer type, runtime precision) → count over the compute layers of the compiled graph, e.g.
    ("FullyConnected", "i8"): what OpenVINO actually runs, after its own fusions."""
    counts: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer.startswith(_COMPUTE_LAYERS):
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            counts[(layer, precision)] += 1
    return counts


def layer_profile(graph: str | Path, precision: str, x: np.ndarray, runs: int = 3, threads: int = 0) -> list[dict]:
    """Where an encoder's time goes: the graph compiled as `compile_encoder` compiles it, with per-layer counters,
    run on x once to warm up and then `runs` times. One row per (layer type, kernel) after OpenVINO's fusions —
    e.g. ("FullyConnected", "brgemm_avx512_bf16") —, with its mean milliseconds per inference and layer count,
    largest first. Layers that did not run (fused away, constants) are left out."""
    import openvino as ov

    compiled = compile_encoder(graph, precision, threads, profile=True)
    request = compiled.create_infer_request()
    request.infer({0: x})
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for _ in range(runs):
        request.infer({0: x})
        for info in request.get_profiling_info():
            if info.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            key = (info.node_type, info.exec_type)
            totals[key] += info.real_time.total_seconds() * 1e3 / runs
            counts[key] += 1
    return [{"layer": layer, "kernel": kernel, "ms": ms, "layers": counts[(layer, kernel)] // runs}
            for (layer, kernel), ms in totals.most_common()]


class OpenVINOImageEncoder(nn.Module):
    """A compiled OpenVINO encoder as a module: (1, 3, S, S) float32 → (1, 256, S/16, S/16) float32 (CPU)."""

    def __init__(self, compiled, img_size: int, precision: str) -> None:
        super().__init__()
        self.compiled = compiled
        self.img_size = img_size
        self.precision = precision
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def __deepcopy__(self, memo) -> OpenVINOImageEncoder:
        """A copy shares the compiled model (read-only, thread-safe) and gets its own request pool."""
        return OpenVINOImageEncoder(self.compiled, self.img_size, self.precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.img_size
        if tuple(x.shape) != (1, 3, s, s):
            raise ValueError(f"encode_image expects a (1, 3, {s}, {s}) preprocessed image, got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            out = request.infer({0: arr})[0]  # a copy (share_outputs=False): the request can be reused at once
        finally:
            self._requests.put(request)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))
