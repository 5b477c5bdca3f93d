"""`evaluate_masks`: FiftyOne's COCO-style instance-mask evaluation plus a per-sample mean best-match mask IoU.

The evaluation is one FiftyOne evaluation run of a method defined here, `TinySAMMaskEvaluation`, a
`COCOEvaluation` (so the App's evaluation panel and `load_evaluation_results` treat it as COCO) that

- also writes `<eval_key>_mean_best_iou` per sample, declared, listed, renamed and deleted with the run's own
  fields (`get_fields` / `rename` / `cleanup`), so `delete_evaluation` and `rename_evaluation` stay consistent;
- compares class-agnostically when asked (`auto_mask`'s masks carry no label) by giving both sides one label
  in memory while each sample is matched. The run is recorded on the caller's view: no `set_field` stage that
  would relabel the ground truth when the App loads the evaluation view.
"""

from __future__ import annotations

import logging
import math

from ..masks import mean_best_match_iou
from .common import Progress, check_collection, check_field_name, image_size, label_type, unhidden
from .conversions import detection_to_mask

logger = logging.getLogger(__name__)

# The one label class-agnostic masks are compared under (auto_mask's masks carry none).
AGNOSTIC_LABEL = "object"

try:  # FiftyOne is optional for the package; the evaluation method exists only where it is installed
    from fiftyone.utils.eval.coco import COCOEvaluation as _COCOEvaluation
    from fiftyone.utils.eval.coco import COCOEvaluationConfig as _COCOEvaluationConfig
except ImportError:  # pragma: no cover - exercised only without fiftyone
    _COCOEvaluation = _COCOEvaluationConfig = object


def mean_best_iou_field(eval_key: str) -> str:
    """Name of the per-sample field written next to FiftyOne's `<eval_key>_tp/_fp/_fn`."""
    return f"{eval_key}_mean_best_iou"


class TinySAMMaskEvaluationConfig(_COCOEvaluationConfig):
    """`COCOEvaluationConfig` (method "coco") plus `class_agnostic`: match masks whatever their labels."""

    def __init__(self, pred_field, gt_field, class_agnostic: bool = False, **kwargs):
        super().__init__(pred_field, gt_field, **kwargs)
        self.class_agnostic = bool(class_agnostic)

    @property
    def requires_additional_fields(self):
        return True  # metadata (image size) and the mean-best-IoU field are read / written per sample


class TinySAMMaskEvaluation(_COCOEvaluation):
    """COCO matching of instance masks (see the module docstring) + `<eval_key>_mean_best_iou` per sample."""

    def register_samples(self, samples, eval_key, dynamic=True):
        super().register_samples(samples, eval_key, dynamic=dynamic)
        if eval_key is not None:
            import fiftyone as fo

            samples._dataset.add_sample_field(mean_best_iou_field(eval_key), fo.FloatField)

    def evaluate(self, sample_or_frame, eval_key=None):
        gts, preds = sample_or_frame[self.gt_field], sample_or_frame[self.pred_field]
        gt_dets = [] if gts is None else list(gts.detections)
        pred_dets = [] if preds is None else list(preds.detections)
        if eval_key is not None:
            size = image_size(sample_or_frame.metadata, sample_or_frame.filepath)
            sample_or_frame[mean_best_iou_field(eval_key)] = mean_best_match_iou(
                [detection_to_mask(d, size) for d in gt_dets], [detection_to_mask(d, size) for d in pred_dets])
        if not self.config.class_agnostic:
            return super().evaluate(sample_or_frame, eval_key=eval_key)
        labels = [d.label for d in gt_dets + pred_dets]
        for d in gt_dets + pred_dets:
            d.label = AGNOSTIC_LABEL
        try:
            return super().evaluate(sample_or_frame, eval_key=eval_key)
        finally:  # the stored labels are the original ones
            for d, label in zip(gt_dets + pred_dets, labels):
                d.label = label

    def generate_results(self, samples, matches, eval_key=None, classes=None, missing=None, progress=None):
        if self.config.class_agnostic and self.config.compute_mAP:
            # the mAP sweep reads the labels again: give it a one-label view (used here only, never stored)
            samples = samples.set_field(f"{self.config.gt_field}.detections.label", AGNOSTIC_LABEL).set_field(
                f"{self.config.pred_field}.detections.label", AGNOSTIC_LABEL)
        return super().generate_results(samples, matches, eval_key=eval_key, classes=classes, missing=missing,
                                        progress=progress)

    def get_fields(self, samples, eval_key, include_custom_metrics=True):
        fields = super().get_fields(samples, eval_key, include_custom_metrics=include_custom_metrics)
        return [*fields, mean_best_iou_field(eval_key)]

    def cleanup(self, samples, eval_key):
        samples._dataset.delete_sample_fields([mean_best_iou_field(eval_key)], error_level=1)
        super().cleanup(samples, eval_key)


def _require_masks(view, field: str) -> None:
    from fiftyone import ViewField as F

    with_mask = (F("mask") != None) | (F("mask_path") != None)
    missing = view.count(f"{field}.detections") - view.filter_labels(
        field, with_mask, only_matches=False).count(f"{field}.detections")
    if missing:
        raise ValueError(f"{field}: {missing} detections have no instance mask (neither `mask` nor `mask_path`); "
                         f"expected every detection to carry one")


def _require_confidence(view, field: str) -> None:
    from fiftyone import ViewField as F

    missing = view.count(f"{field}.detections") - view.filter_labels(
        field, F("confidence") != None, only_matches=False).count(f"{field}.detections")
    if missing:
        raise ValueError(f"compute_mAP needs a confidence on every prediction; {missing} detections of {field!r} "
                         f"have none")


def check_evaluation_args(view, pred_field: str, gt_field: str, eval_key: str) -> None:
    import fiftyone as fo

    check_collection(view)
    for name, what in ((pred_field, "pred_field"), (gt_field, "gt_field")):
        check_field_name(name, what)
        kind = label_type(view, name)
        if kind is None:
            raise ValueError(f"{what} {name!r} is not a field of the dataset; fields: "
                             f"{sorted(view._dataset.get_field_schema())}")
        if kind is not fo.Detections:
            raise ValueError(f"{what} {name!r} holds {getattr(kind, '__name__', kind)}; expected Detections with "
                             f"instance masks")
    if pred_field == gt_field:
        raise ValueError(f"pred_field and gt_field must differ, both are {pred_field!r}")
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        raise ValueError(f"eval_key must be a Python identifier, got {eval_key!r}")


def evaluate_masks(view, pred_field: str, gt_field: str, eval_key: str, *, compute_mAP: bool = False,
                   progress: Progress = None) -> dict:
    """Compare the instance masks of `pred_field` with those of `gt_field`, as the FiftyOne run `eval_key`.

    Classwise when the predictions carry labels, class-agnostic otherwise; COCO mAP when asked. An existing run
    of that key is replaced. Per sample: FiftyOne's `<eval_key>_tp/_fp/_fn` and `<eval_key>_mean_best_iou` (mean
    over the ground truth of the best mask IoU a prediction reaches; None without ground truth). All arguments
    and both fields are checked before anything is written. progress: FiftyOne's convention.

    Returns tp, fp, fn, precision, recall, mAP (or None), mean_best_iou (mean over samples with ground truth).
    """
    check_evaluation_args(view, pred_field, gt_field, eval_key)
    eval_view = unhidden(view)
    _require_masks(eval_view, gt_field)
    _require_masks(eval_view, pred_field)
    if compute_mAP:
        _require_confidence(eval_view, pred_field)
    labels = [v for v in eval_view.distinct(f"{pred_field}.detections.label") if v is not None]
    classwise = bool(labels)
    logger.info("evaluate_masks %s vs %s as %r (classwise=%s, mAP=%s)", pred_field, gt_field, eval_key,
                classwise, compute_mAP)
    eval_view.compute_metadata(progress=False)
    if eval_key in eval_view.list_evaluations():
        eval_view.delete_evaluation(eval_key)
    results = eval_view.evaluate_detections(
        pred_field, gt_field=gt_field, eval_key=eval_key, method=TinySAMMaskEvaluationConfig, use_masks=True,
        classwise=classwise, class_agnostic=not classwise, compute_mAP=compute_mAP, progress=progress)
    tp, fp, fn = (int(eval_view.sum(f"{eval_key}_{k}") or 0) for k in ("tp", "fp", "fn"))
    per_sample = [v for v in eval_view.values(mean_best_iou_field(eval_key)) if v is not None]
    mAP = float(results.mAP()) if compute_mAP else None
    return {
        "eval_key": eval_key, "classwise": classwise,
        "tp": tp, "fp": fp, "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        # FiftyOne reports -1 when there is nothing to average over
        "mAP": mAP if mAP is not None and math.isfinite(mAP) and mAP >= 0 else None,
        "mean_best_iou": sum(per_sample) / len(per_sample) if per_sample else None,
        "mean_best_iou_field": mean_best_iou_field(eval_key),
    }
