"""What the dataset operations share: checks made before any work, the predictor, progress, shards.

Every check here raises before a model is loaded or a label is written, with a message that names what was
expected and what was received. FiftyOne is imported inside the functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

# FiftyOne's convention: None (fo.config.show_progress_bars), True / False, or a callable given the ProgressBar.
Progress = bool | Callable[[Any], None] | None


def check_collection(view) -> None:
    """A Dataset or DatasetView of images (video, group and 3D collections are refused)."""
    if not (hasattr(view, "values") and hasattr(view, "set_values") and hasattr(view, "select")):
        raise TypeError(f"expected a FiftyOne Dataset or DatasetView, got {type(view).__name__}")
    if view.media_type != "image":
        raise ValueError(f"expected a collection of images (media_type 'image'), got media_type "
                         f"{view.media_type!r}; for videos, convert frames first (e.g. `view.to_frames()`)")
    if view._is_patches or view._is_frames or view._is_clips:
        raise ValueError("expected a view of the dataset's own samples, got a generated patches/frames/clips view")


def check_field_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or name.startswith("_") or "." in name:
        raise ValueError(f"{what} must be a top-level field name (no dots, not starting with '_'), got {name!r}")


def label_type(view, name: str):
    """The `Label` class stored in the top-level field `name` of the dataset (None if absent), whatever the view
    shows (a `select_fields` view may hide it)."""
    field = view._dataset.get_field_schema().get(name)
    if field is None:
        return None
    return getattr(field, "document_type", None) or type(field)


def check_output_field(view, name: str, what: str = "label_field") -> None:
    """`name` can receive `Detections`: absent, or already a `Detections` field."""
    import fiftyone as fo

    check_field_name(name, what)
    kind = label_type(view, name)
    if kind is not None and kind is not fo.Detections:
        raise ValueError(f"{what} {name!r} already holds {kind.__name__}; expected a new field or a Detections "
                         f"field (choose another name)")


def check_prompt_field(view, name: str) -> type:
    """`name` exists and holds `Detections` (box prompts) or `Keypoints` (point prompts); returns the class."""
    import fiftyone as fo

    check_field_name(name, "prompt_field")
    kind = label_type(view, name)
    if kind is None:
        fields = sorted(view._dataset.get_field_schema())
        raise ValueError(f"prompt_field {name!r} is not a field of the dataset; fields: {fields}")
    if kind not in (fo.Detections, fo.Keypoints):
        raise ValueError(f"prompt_field {name!r} holds {getattr(kind, '__name__', kind)}; expected Detections "
                         f"(box prompts) or Keypoints (point prompts)")
    return kind


def unhidden(view):
    """`view` without its `select_fields` / `exclude_fields` stages: the same samples, every field visible (so a
    view that hides the field an operation reads or writes still works)."""
    import fiftyone.core.stages as fos

    if view is view._dataset or not any(isinstance(s, (fos.SelectFields, fos.ExcludeFields)) for s in view._stages):
        return view
    out = view._dataset.view()
    for stage in view._stages:
        if not isinstance(stage, (fos.SelectFields, fos.ExcludeFields)):
            out = out.add_stage(stage)
    return out


def check_range(name: str, value, low: float | None, high: float | None, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")


def make_predictor(checkpoint, predictor, **load_options):
    """An existing predictor, or one loaded from `checkpoint` (None: the configured default).

    FiftyOne runs our code inside its own processes, so this is where TinySAM's configuration enters
    (`Settings.from_env()`: the default checkpoint, engine choice, pixel limit). load_options (device, engine,
    precision) are forwarded to `load_model` only when given.
    """
    if predictor is not None:
        return predictor
    from ..allocator import tune_in_process
    from ..checkpoint import load_model
    from ..config import Settings
    from ..predictor import Predictor

    tune_in_process()  # FiftyOne's processes start without our malloc variables (see allocator.py)
    settings = Settings.from_env()
    options = {k: v for k, v in load_options.items() if v is not None}
    return Predictor(load_model(checkpoint, settings=settings, **options), settings.max_image_pixels)


def image_size(sample_metadata, filepath: str) -> tuple[int, int]:
    """(H, W) from the sample's metadata, or read from the image header."""
    if sample_metadata is not None and sample_metadata.height and sample_metadata.width:
        return int(sample_metadata.height), int(sample_metadata.width)
    from PIL import Image

    with Image.open(filepath) as img:
        w, h = img.size
    return h, w


def drain(make_steps: Callable[[Callable[[float], None]], Iterator[tuple[float, int]]], progress: Progress,
          what: str = "samples") -> dict:
    """Run an `iter_*` generator to its end under a FiftyOne progress bar; return the summary it returns.

    `make_steps(within)` builds the generator; the generator calls `within(fraction)` while one sample is being
    processed (a large image), and yields (samples_done, samples_total) after each sample.
    """
    import fiftyone.core.utils as fou

    state: dict = {"pb": None, "base": 0.0}

    def within(fraction: float) -> None:
        pb = state["pb"]
        if pb is not None:
            pb.set_iteration(state["base"] + min(max(fraction, 0.0), 1.0))

    steps = make_steps(within)
    try:
        done, total = next(steps)
    except StopIteration as stop:
        return stop.value
    with fou.ProgressBar(total=total, progress=progress, iters_str=what) as pb:
        state["pb"] = pb
        pb.set_iteration(done)
        while True:
            state["base"] = float(done)
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value
            pb.set_iteration(done)


def shard_of(sample_id: str, num_shards: int) -> int:
    """The shard (0 … num_shards-1) of a sample: its ObjectId as an integer, modulo num_shards.

    A fixed function of the id, so shards stay disjoint and complete when samples are added, labelled or filtered
    between runs; ObjectIds end in a per-process counter, so consecutive inserts spread evenly."""
    return int(sample_id, 16) % num_shards


def shard_view(view, shard_index: int, num_shards: int):
    """The samples of `view` in shard `shard_index` of `num_shards` (see `shard_of`)."""
    check_range("num_shards", num_shards, 1, None, integer=True)
    check_range("shard_index", shard_index, 0, num_shards - 1, integer=True)
    if num_shards == 1:
        return view
    ids = [i for i in view.values("id") if shard_of(i, num_shards) == shard_index]
    return view.select(ids)


def write_detections(view, sample_id: str, label_field: str, detections: list) -> None:
    """Set `label_field` of one sample to `Detections(detections)` (on the dataset: the view may hide the field)."""
    import fiftyone as fo

    view._dataset.select(sample_id).set_values(label_field, [fo.Detections(detections=detections)])
