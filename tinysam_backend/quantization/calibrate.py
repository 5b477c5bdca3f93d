"""Post-training W8A8 calibration of TinySAM (the paper's Q-TinySAM recipe): `calibrate_scales`.

What is quantized (symmetric 8-bit, zero point 0), encoder **and** decoder:
- convolutions (incl. depthwise and the BatchNorm-folded `ConvBN`s) and the decoder's transposed
  convolutions: input and output per tensor, weights per output channel;
- linear layers: input per tensor, weights per layer;
- attention matrix products (q·kᵀ and probabilities·v of every TinyViT window attention and every
  two-way-transformer attention): per-head scales for q, kᵀ, probabilities (uint8, they are ≥ 0) and v
  (kᵀ and v on a 7-bit grid: ONNX Runtime's AVX2 kernel saturates with two full-range operands, see `qdq`).

What stays fp32, and why:
- LayerNorm / LayerNorm2d, softmax, GELU / ReLU and the residual additions: they run between the
  quantized products on the dequantized values (ONNX Runtime has no int8 kernels for them on CPU, and
  their inputs have outliers a per-tensor int8 grid would clip — the reason the paper keeps them too);
- the prompt encoder (Fourier features of the click/box coordinates and the 3 small convolutions of the
  mask prompt): it is < 0.1 % of the decoder's work and quantizing coordinates moves the click;
- the hypernetwork product `mask tokens · upscaled features` that forms the final mask logits and the
  IoU head's output: they *are* the outputs the search protects, and cost ~1 % of the decoder.

How the scales are found, in three steps (one module each):
1. `points`: every quantized module, named by its node in the exported fp32 ONNX graphs;
2. `recorder`: each calibration image (`calibration_data`) runs forward and backward once; hooks keep sampled
   inputs and fp32 outputs of every point and the sensitivity of the final outputs (mask logits, IoU) to them,
   the diagonal of a Gauss–Newton Hessian;
3. `scale_search`: per point, candidates `α · max|x| / 127` scored by that Hessian-weighted output distortion,
   searched alternately (input → weights → output; q → k → probabilities → v per head for attention).
The fp32 outputs are kept for sampled rows / patches / windows only, to keep the search fast on CPU.
`artifact.quantize_model` writes the QDQ graphs with the scales found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..modeling.sam import Sam
from .points import QuantPoint, quantization_points
from .qdq import PointScales
from .recorder import collect_calibration_data
from .scale_search import search_attention, search_layer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationConfig:
    """Scale-search settings (defaults: the paper's 100 candidates in [0.01, 1.2]·range, 2 alternating rounds)."""

    candidates: int = 100
    min_ratio: float = 0.01
    max_ratio: float = 1.2
    rounds: int = 2
    rows_per_image: int = 128        # sampled output positions per conv/linear point and image
    windows_per_call: int = 4        # sampled attention windows (encoder) per image
    prompts_per_image: int = 4       # half single clicks, half boxes
    decoder_attention_rows: int = 2  # prompts per decode call whose attention tensors are kept
    query_rows: int = 64             # sampled query rows per attention
    iou_weight: float = 1.0          # weight of the IoU squared error next to the mask KL
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.rounds < 0:
            raise ValueError(f"candidates must be >= 1 and rounds >= 0, got {self.candidates} and {self.rounds}")
        if not 0 < self.min_ratio <= self.max_ratio:
            raise ValueError(f"need 0 < min_ratio <= max_ratio, got {self.min_ratio} and {self.max_ratio}")


def calibrate_scales(sam: Sam, images: Sequence[np.ndarray], encoder_nodes: set[str], decoder_nodes: set[str],
                     cfg: CalibrationConfig = CalibrationConfig()) -> tuple[dict[str, PointScales], dict]:
    """The scale search of the module docstring → ({point name: PointScales}, per-point report)."""
    if not images:
        raise ValueError("calibration needs at least one image, got none")
    sam = sam.eval()
    points = quantization_points(sam, encoder_nodes, decoder_nodes)
    t0 = time.perf_counter()
    collect_calibration_data(sam, images, points, cfg)
    t1 = time.perf_counter()
    for pt in points:
        if not pt.x:
            raise ValueError(f"quantization point {pt.name} saw no data during calibration")
    found = search_scales(points, cfg)
    logger.info("calibration: recording %.1f s, search %.1f s over %d points", t1 - t0, time.perf_counter() - t1,
                len(points))
    scales = {pt.name: found[pt.name][0] for pt in points}
    report = {pt.name: {"graph": pt.graph, "kind": pt.kind, **found[pt.name][1]} for pt in points}
    return scales, report


def search_scales(points: list[QuantPoint], cfg: CalibrationConfig, workers: int | None = None
                  ) -> dict[str, tuple[PointScales, dict]]:
    """The scale search of every point ({name: (scales, report)}), `workers` points at a time (default: torch's
    intra-op thread count), each on one thread.

    The points are independent, and one thread per point keeps each search's blocks in that core's cache with no
    synchronisation between threads (torch releases the GIL inside its kernels); torch's own intra-op threads
    are set to 1 meanwhile and restored after. Largest points first, so that the threads finish together. Each
    point's recorded samples are released once searched.
    """
    workers = workers or torch.get_num_threads()

    def search(pt: QuantPoint) -> tuple[str, tuple[PointScales, dict]]:
        with torch.inference_mode():  # grad mode is per thread
            found = (search_attention if pt.kind == "attention" else search_layer)(pt, cfg)
        pt.x, pt.o, pt.h, pt.extra = [], [], [], []
        return pt.name, found

    def size(pt: QuantPoint) -> int:
        return sum(t.numel() for chunk in pt.x for t in (chunk if isinstance(chunk, tuple) else (chunk,)))

    order = sorted(points, key=size, reverse=True)
    if workers == 1:
        return dict(map(search, order))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scale-search") as pool:
            return dict(pool.map(search, order))
    finally:
        torch.set_num_threads(threads)
