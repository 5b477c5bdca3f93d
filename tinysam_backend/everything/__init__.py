"""Segment everything: TinySAM's hierarchical strategy (paper §3.4) and SAM's dense grid.

`segment_everything(predictor, image, mode="hierarchical" | "dense", ...)` returns one record per mask
(COCO RLE `segmentation`, `bbox` XYWH, `area`, `predicted_iou`, `stability_score`, `point_coords`).
Modules: `generator` (the algorithm), `point_grids` (first/second-round points), `postprocess` (stability,
boxes, NMS, RLE), `decoders` (batched decoding of many point prompts, by `..lowrank_decoder` when it can), `cli`.
Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

from .generator import MODES, EverythingParams, EverythingResult, run_everything, segment_everything

__all__ = ["MODES", "EverythingParams", "EverythingResult", "run_everything", "segment_everything"]
