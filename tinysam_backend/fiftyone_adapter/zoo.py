"""TinySAM as a FiftyOne zoo model (the repository is a remote zoo model source: `fiftyone_zoo/`).

    import fiftyone.zoo as foz
    foz.register_zoo_model_source("https://github.com/<owner>/tinysam-backend")
    model = foz.load_zoo_model("tinysam")                  # or "tinysam-int8"; checkpoint=PATH offline
    dataset.apply_model(model, label_field="masks", prompt_field="detections")   # boxes (or keypoints) → masks
    dataset.apply_model(model, label_field="auto")         # no prompt field: hierarchical segment-everything

The contract is that of FiftyOne's own Segment Anything zoo models: `prompt_field` (or `box_prompt_field` /
`point_prompt_field`) names a `Detections` or `Keypoints` field whose labels become prompts, one instance mask
per prompt with its label; without one, every mask segment-everything finds. `batch_size` is FiftyOne's (images
per `predict_all`); `num_workers` decodes images in FiftyOne's data-loader workers where torchvision is installed
(FiftyOne's data loader needs it; elsewhere FiftyOne ignores `num_workers` with a warning); `device`, `engine`
and `precision` go to `load_model`.

Weights: `download_model` fetches the manifest's checkpoint with the project's own fetch + checksum code
(`tinysam_backend.weights`), reusing the TinySAM cache (`TINYSAM_CACHE_DIR`); "tinysam-int8" is then quantized
to real int8 (`tinysam quantize`'s calibration). Offline, `load_zoo_model("tinysam", checkpoint=PATH)` or
`TINYSAM_CHECKPOINT` name a local file (FiftyOne still calls the download hook first: without a network it logs
a warning and leaves the model undownloaded, a checksum mismatch is an error).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..masks import DEFAULT_PROMPTS_PER_BATCH

logger = logging.getLogger(__name__)

# zoo name → the weights manifest entry it is made from, and whether it is quantized to int8 after download
ZOO_MODELS = {
    "tinysam": {"weights": "tinysam_42.3", "int8": False},
    "tinysam-int8": {"weights": "tinysam_42.3", "int8": True},
}
PROMPT_KEYS = ("prompt_field", "box_prompt_field", "point_prompt_field")


def _model_entry(model_name: str) -> dict:
    base = model_name.split("@")[0]
    if base not in ZOO_MODELS:
        raise ValueError(f"unknown TinySAM zoo model {model_name!r}; expected one of {sorted(ZOO_MODELS)}")
    return ZOO_MODELS[base]


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def download_model(model_name: str, model_path: str) -> None:
    """FiftyOne's download hook: the checkpoint (fetched and verified into the TinySAM cache, then linked to
    `model_path`); for "tinysam-int8", the int8 artifact directory quantized from it."""
    from ..config import Settings
    from ..weights import fetch, lookup

    entry = _model_entry(model_name)
    settings = Settings.from_env()
    try:
        fp32 = fetch(lookup(entry["weights"]), settings.cache_dir)
    except OSError as e:  # no network: FiftyOne downloads before it loads, so offline use must get past here
        logger.warning("could not fetch the %s weights (%s); nothing downloaded. Offline, pass checkpoint=PATH to "
                       "load_zoo_model or set TINYSAM_CHECKPOINT", model_name, e)
        return
    dest = Path(model_path)
    if not entry["int8"]:
        _place(fp32, dest)
        return
    import subprocess
    import sys

    # `tinysam quantize` (its default calibration on built-in images), the public way to make the int8 artifact
    logger.info("quantizing %s to int8 into %s", fp32, dest)
    subprocess.run([sys.executable, "-m", "tinysam_backend.cli", "quantize", "--checkpoint", str(fp32),
                    "--out", str(dest)], check=True)


def load_model(model_name: str, model_path: str, checkpoint=None, device=None, engine=None, precision=None,
               prompts_per_batch: int = DEFAULT_PROMPTS_PER_BATCH, **everything_params):
    """FiftyOne's load hook: a `TinySAMModel`. checkpoint: a local file / quantized directory used instead of
    the downloaded one (then nothing needs fetching); otherwise `TINYSAM_CHECKPOINT`, then `model_path`.
    everything_params: fields of `EverythingParams` (mode, points_per_side, …) for samples without prompts."""
    from ..config import Settings
    from ..errors import MissingCheckpointError
    from ..everything import EverythingParams
    from .common import check_range, make_predictor

    _model_entry(model_name)
    everything = EverythingParams.from_overrides(**everything_params)
    check_range("prompts_per_batch", prompts_per_batch, 1, None, integer=True)
    source = checkpoint or Settings.from_env().checkpoint
    if source is None:
        if not Path(model_path).exists():
            raise MissingCheckpointError(
                f"zoo model {model_name!r} is not downloaded ({model_path} missing) and no checkpoint was given; "
                f"run `fiftyone zoo models download {model_name}` or pass checkpoint=PATH to load_zoo_model")
        source = model_path
    predictor = make_predictor(source, None, device=device, engine=engine, precision=precision)
    cls = _loader_model_class() if _has_data_loader() else TinySAMModel
    return cls(predictor, name=model_name, prompts_per_batch=prompts_per_batch, everything=everything)


class ToRGBArray:
    """Data-loader transform: a PIL image → H×W×3 uint8 RGB array in the frame FiftyOne shows (EXIF applied)."""

    def __call__(self, img):
        from ..image_io import array_to_rgb, pil_to_rgb

        return array_to_rgb(img) if isinstance(img, np.ndarray) else pil_to_rgb(img)


def _collate_list(batch):
    return list(batch)


def _model_bases():
    import fiftyone.core.models as fom

    return fom.Model, fom.SamplesMixin


try:
    _BASES = _model_bases()
except ImportError:  # pragma: no cover - FiftyOne not installed
    _BASES = (object,)


def _has_data_loader() -> bool:
    """FiftyOne's data loader (`fiftyone.utils.torch`) needs torchvision; without it images are read in the
    main loop and `num_workers` is ignored by FiftyOne (with its warning)."""
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


class TinySAMModel(*_BASES):
    """A FiftyOne `Model`: prompts of a sample field → instance masks, or segment-everything without prompts."""

    def __init__(self, predictor, *, name: str = "tinysam", prompts_per_batch: int = DEFAULT_PROMPTS_PER_BATCH,
                 everything=None):
        import fiftyone.core.models as fom

        from ..everything import EverythingParams

        fom.SamplesMixin.__init__(self)
        self.predictor = predictor
        self.name = name
        self.prompts_per_batch = prompts_per_batch
        self.everything = EverythingParams() if everything is None else everything  # without a prompt field
        self._preprocess = True
        self._transforms = ToRGBArray()

    # --- fiftyone.core.models.Model
    @property
    def media_type(self):
        return "image"

    @property
    def ragged_batches(self):
        return False  # our collate function keeps a batch as a list of arrays of any size

    @property
    def transforms(self):
        return self._transforms

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    @property
    def has_logits(self):
        return False

    @property
    def has_collate_fn(self):
        return True

    @staticmethod
    def collate_fn(batch):
        return _collate_list(batch)

    def predict(self, arg, sample=None):
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args, samples=None):
        if samples is None:
            samples = [None] * len(args)
        return [self._predict_one(img, sample) for img, sample in zip(args, samples)]

    # --- the work
    def _prompt_field(self) -> str | None:
        fields = {k: v for k, v in (self.needs_fields or {}).items() if k in PROMPT_KEYS and v}
        if len(set(fields.values())) > 1:
            raise ValueError(f"one prompt field is supported, got {fields}")
        return next(iter(fields.values()), None)

    def _predict_one(self, img, sample):
        import fiftyone as fo

        from ..everything import run_everything
        from ..image_io import array_to_rgb, pil_to_rgb
        from .conversions import everything_record_to_detection, prompt_mask_to_detection
        from .masks_from_prompts import _prompt_masks

        image = pil_to_rgb(img) if not isinstance(img, np.ndarray) else array_to_rgb(img)
        size = image.shape[:2]
        field = self._prompt_field()
        if field is None:
            records = run_everything(self.predictor, image, self.everything).records
            dets = [everything_record_to_detection(r, size) for r in records]
            return fo.Detections(detections=[d for d in dets if d is not None])
        if sample is None:
            raise ValueError(f"prompt field {field!r} given but no sample passed to predict()")
        labels = sample[field]
        if labels is None:
            return fo.Detections()
        if isinstance(labels, fo.Detections):
            prompts, boxes = list(labels.detections), True
        elif isinstance(labels, fo.Keypoints):
            prompts, boxes = list(labels.keypoints), False
        else:
            raise TypeError(f"prompt field {field!r} holds {type(labels).__name__}; expected Detections or Keypoints")
        if not prompts:
            return fo.Detections()
        emb = self.predictor.embed(image)
        masks, scores = _prompt_masks(self.predictor, emb, prompts, size, boxes, self.prompts_per_batch)
        return fo.Detections(detections=[prompt_mask_to_detection(p, m, float(s), size)
                                         for p, m, s in zip(prompts, masks, scores)])


def _loader_model_class():
    """`TinySAMModel` that FiftyOne feeds through its torch data loader (`num_workers` decode images in parallel)."""
    import fiftyone.core.models as fom

    return type("TinySAMLoaderModel", (TinySAMModel, fom.TorchModelMixin), {"__module__": __name__})
