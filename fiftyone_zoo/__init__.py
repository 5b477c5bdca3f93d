"""FiftyOne remote zoo model source hooks for TinySAM (`foz.register_zoo_model_source(<this repository>)`).

FiftyOne copies this folder and calls `download_model` / `load_model`; the work is done by the installed
`tinysam_backend` package (`tinysam_backend/fiftyone_adapter/zoo.py`).
"""

from tinysam_backend.fiftyone_adapter.zoo import download_model, load_model

__all__ = ["download_model", "load_model"]
