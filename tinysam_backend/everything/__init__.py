"""Segment everything: TinySAM's hierarchical strategy (paper §3.4) and SAM's dense grid.

`segment_everything(predictor, image, mode="hierarchical" | "dense", ...)` returns one record per mask
(COCO RLE `segmentation`, `bbox` XYWH, `area`, `predicted_iou`, `stability_score`, `point_coords`).
Modules: `params` (`EverythingParams`: every parameter's name, default, range and help, which the CLI, Label Studio
and FiftyOne are built from), `generator` (the algorithm), `point_grids` (first/second-round points), `postprocess`
(boxes, NMS, small regions), `decoders` (batched decoding of many point prompts, by `..modeling.lowrank_decoder` when
it can), `cli`. Importing this package loads only `params`; the rest (torch) when a function is used.
"""

from __future__ import annotations

import importlib

from .params import DECODERS, MODES, EverythingParams, Parameter

_LAZY = {"EverythingResult": "generator", "run_everything": "generator", "segment_everything": "generator"}

__all__ = ["DECODERS", "MODES", "EverythingParams", "EverythingResult", "Parameter", "run_everything",
           "segment_everything"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
