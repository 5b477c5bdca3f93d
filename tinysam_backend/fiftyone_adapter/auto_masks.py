"""`auto_mask`: segment-everything (hierarchical, paper §3.4, or dense) on every sample → instance masks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from .common import (
    Progress,
    check_collection,
    check_output_field,
    drain,
    make_predictor,
    unhidden,
    write_detections,
)
from .conversions import everything_record_to_detection

logger = logging.getLogger(__name__)


def everything_defaults() -> dict:
    """segment_everything's parameters and their defaults, read from `EverythingParams` (one source)."""
    from ..everything import EverythingParams

    return {p.name: p.default for p in EverythingParams.parameters()}


def iter_auto_mask(view, label_field: str, *, checkpoint=None, output_dir=None, overwrite: bool = False,
                   predictor=None, within: Callable[[float], None] | None = None, device=None,
                   **everything_params) -> Iterator[tuple[int, int]]:
    """Generator form of `auto_mask`: yields (samples_done, samples_to_do) after each sample; returns the summary.

    within(fraction) is called while one image is segmented (its prompts done / planned)."""
    from ..config import DEFAULT_MAX_IMAGE_PIXELS
    from ..errors import ImageError
    from ..everything import EverythingParams, run_everything
    from ..image_io import load_image

    check_collection(view)
    check_output_field(view, label_field)
    params = EverythingParams.from_overrides(**everything_params)
    view = unhidden(view)
    todo = view if overwrite else view.exists(label_field, False)
    ids, paths = todo.values(["id", "filepath"])
    total = len(ids)
    skipped = 0 if overwrite else len(view) - total
    logger.info("auto_mask → %s: %d samples to do, %d already done", label_field, total, skipped)
    yield 0, total
    summary = {"label_field": label_field, "samples": 0, "skipped": skipped, "masks": 0, "failed": []}
    if total == 0:
        return summary
    pred = make_predictor(checkpoint, predictor, device=device)
    out_root = None if output_dir is None else Path(output_dir).expanduser() / label_field

    reached = {"fraction": 0.0}

    def on_prompts(done, planned):
        # prompts done / planned; the plan grows when the second round is known, so a completed plan is not the
        # end of the image (the per-sample yield is): report only progress inside a plan, never going back
        if within is not None and 0 < done < planned and done / planned > reached["fraction"]:
            reached["fraction"] = done / planned
            within(reached["fraction"])

    for i, (sample_id, filepath) in enumerate(zip(ids, paths)):
        try:
            image = load_image(filepath, getattr(pred, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        except ImageError as e:  # left unset: reported, and retried by the next run
            logger.warning("auto_mask: sample %s (%s) skipped: %s", sample_id, filepath, e)
            summary["failed"].append(sample_id)
            yield i + 1, total
            continue
        reached["fraction"] = 0.0
        records = run_everything(pred, image, params, on_prompts).records
        size = image.shape[:2]
        del image
        sample_dir = None
        if out_root is not None:
            sample_dir = out_root / sample_id
            if sample_dir.is_dir():
                for old in sample_dir.glob("*.png"):
                    old.unlink()
        dets = []
        for k, record in enumerate(records):
            mask_path = None if sample_dir is None else sample_dir / f"{k:04d}.png"
            det = everything_record_to_detection(record, size, mask_path)
            if det is not None:
                dets.append(det)
        write_detections(view, sample_id, label_field, dets)
        summary["samples"] += 1
        summary["masks"] += len(dets)
        yield i + 1, total
    return summary


def auto_mask(view, label_field: str, *, checkpoint=None, output_dir=None, overwrite: bool = False, predictor=None,
              progress: Progress = None, device=None, **everything_params) -> dict:
    """Segment everything in every sample of `view` into the `Detections` field `label_field`.

    checkpoint: fp32 state dict or quantized artifact dir (None: TINYSAM_CHECKPOINT); predictor: an existing
    `Predictor` to use instead of loading one. output_dir: write masks as PNGs under
    output_dir/label_field/<sample id>/ (`mask_path`) instead of into the documents. overwrite: redo samples whose
    field is already set (otherwise they are skipped, so a stopped run resumes). everything_params: fields of
    `EverythingParams` by name (mode "hierarchical" or "dense", points_per_side, …; the others keep its defaults,
    unknown names or values out of range raise ValueError before any work). progress: FiftyOne's
    convention (None: `fo.config.show_progress_bars`, True/False, or a callable given the progress bar),
    advanced per sample and within each image. Images that cannot be read are logged and left unset (retried
    by the next run). Everything is checked before any work: arguments, the field's type, the media type.

    Returns {label_field, samples (written), skipped (already done), masks, failed (sample ids)}.
    """
    return drain(lambda within: iter_auto_mask(
        view, label_field, checkpoint=checkpoint, output_dir=output_dir, overwrite=overwrite, predictor=predictor,
        within=within, device=device, **everything_params), progress)
