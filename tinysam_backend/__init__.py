"""tinysam-backend: TinySAM (Shu et al., 2312.13789) for Label Studio and FiftyOne.

Public API (imported lazily, so `import tinysam_backend` loads nothing heavy):
`load_model`, `Predictor`, `ImageEmbedding`, `load_image`, `segment_everything`.
The front ends are packages of their own: `tinysam_backend.label_studio`, `tinysam_backend.fiftyone_adapter`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "tinysam_backend.checkpoint",
    "Predictor": "tinysam_backend.predictor",
    "ImageEmbedding": "tinysam_backend.predictor",
    "load_image": "tinysam_backend.image_io",
    "Settings": "tinysam_backend.config",
    "segment_everything": "tinysam_backend.everything",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinysam_backend' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
