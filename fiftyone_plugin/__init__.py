"""TinySAM operators for FiftyOne (plugin `@tinysam/tinysam`).

Each operator is thin: read `ctx.params` → one call into `tinysam_backend.fiftyone_adapter` → progress →
reload. The parameters have the library's names. Requires `tinysam-backend` installed in FiftyOne's
environment (`pip install "tinysam-backend[fiftyone]"` or `pip install -e <checkout>`).
"""

from __future__ import annotations

import logging

import fiftyone.operators as foo
from fiftyone.operators import types
from fiftyone.operators.executor import ExecutionOptions

from tinysam_backend import fiftyone_adapter

logger = logging.getLogger(__name__)

# Views larger than this default to delegated execution in the App (`fiftyone delegated launch` runs them).
DELEGATE_ABOVE_SAMPLES = 25

# segment_everything's parameters, with its defaults (official TinySAM / SAM values).
EVERYTHING_PARAMS = (
    ("points_per_side", int, 32, "Points per side of the grid (hierarchical: first round uses a quarter)"),
    ("pred_iou_thresh", float, 0.88, "Keep masks whose predicted IoU is above this"),
    ("stability_score_thresh", float, 0.95, "Keep masks whose stability score is at least this"),
    ("high_score_thresh", float, 8.5, "Logit above which a first-round pixel needs no second-round point"),
    ("box_nms_thresh", float, 0.7, "Box IoU above which the lower-scored mask is dropped (1.0: keep all)"),
    ("min_mask_region_area", int, 0, "Fill holes / drop islands smaller than this many pixels (0: off)"),
    ("points_per_batch", int, 64, "Prompts decoded at once (memory vs speed)"),
)


def _checkpoint_input(inputs):
    inputs.str("checkpoint", label="Checkpoint",
               description="fp32 state dict (.pth/.safetensors) or quantized artifact directory; "
                           "empty: the configured default (TINYSAM_CHECKPOINT)")


def _checkpoint(ctx):
    return ctx.params.get("checkpoint") or None


def _execution_options(ctx):
    """Immediate or delegated; targets of more than DELEGATE_ABOVE_SAMPLES samples default to delegated."""
    big = ctx.dataset is not None and len(ctx.target_view()) > DELEGATE_ABOVE_SAMPLES
    return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                            default_choice_to_delegated=big)


def _run_steps(ctx, steps, what: str):
    """Drive an `iter_*` generator of the adapter, reporting (done, total) the way the run needs.

    Delegated runs record progress on the operation (`ctx.set_progress`); immediate runs yield App
    progress-bar events, then a dataset reload.
    """
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            summary = stop.value or {}
            break
        fraction = done / total if total else 1.0
        label = f"{what}: {done}/{total} samples"
        if ctx.delegated:
            ctx.set_progress(progress=fraction, label=label)
        else:
            yield ctx.ops.set_progress(label=label, progress=fraction)
    logger.info("%s done: %s", what, summary)
    if ctx.delegated:
        ctx.set_progress(progress=1.0, label=f"{what}: done {summary}")
    else:
        yield ctx.ops.reload_dataset()


class AutoMask(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="auto_mask",
            label="TinySAM: auto-mask everything",
            description="Hierarchical (or dense) segment-everything on every sample → instance masks",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):
        return _execution_options(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()  # opts in to the dataset / current view / selected samples choice
        inputs.str("label_field", label="Label field", default="tinysam", required=True,
                   description="Detections field to write the masks to")
        _checkpoint_input(inputs)
        inputs.enum("mode", list(fiftyone_adapter.MODES), default="hierarchical", label="Mode",
                    description="hierarchical: TinySAM's two-round strategy; dense: SAM's full grid")
        inputs.str("output_dir", label="Mask directory",
                   description="write masks as PNGs here (mask_path) instead of in the samples; "
                               "recommended for big datasets")
        inputs.bool("overwrite", default=False, label="Overwrite",
                    description="redo samples that already have masks (otherwise they are skipped)")
        for name, kind, default, description in EVERYTHING_PARAMS:
            add = inputs.int if kind is int else inputs.float
            add(name, default=default, label=name.replace("_", " "), description=description)
        return types.Property(inputs, view=types.View(label="TinySAM: auto-mask everything"))

    def execute(self, ctx):
        p = ctx.params
        everything = {name: kind(p[name]) for name, kind, _, _ in EVERYTHING_PARAMS if p.get(name) is not None}
        steps = fiftyone_adapter.iter_auto_mask(
            ctx.target_view(), p["label_field"], checkpoint=_checkpoint(ctx), mode=p.get("mode") or "hierarchical",
            output_dir=p.get("output_dir") or None, overwrite=bool(p.get("overwrite", False)), **everything)
        yield from _run_steps(ctx, steps, "TinySAM auto-mask")


class MaskFromBoxes(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="mask_from_boxes",
            label="TinySAM: masks from boxes",
            description="Box prompts from a Detections field → instance masks (zero-shot instance segmentation)",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):
        return _execution_options(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        fields = _detections_fields(ctx)
        if fields:
            inputs.enum("box_field", fields, required=True, label="Box field",
                        description="Detections field whose boxes are the prompts")
        else:
            inputs.str("box_field", required=True, label="Box field",
                       description="Detections field whose boxes are the prompts")
        inputs.str("label_field", default="tinysam_masks", required=True, label="Label field",
                   description="Detections field to write the masks to (labels copied from the boxes)")
        _checkpoint_input(inputs)
        inputs.int("boxes_per_batch", default=fiftyone_adapter.DEFAULT_BOXES_PER_BATCH, label="Boxes per batch",
                   description="box prompts decoded at once")
        return types.Property(inputs, view=types.View(label="TinySAM: masks from boxes"))

    def execute(self, ctx):
        p = ctx.params
        steps = fiftyone_adapter.iter_mask_from_boxes(
            ctx.target_view(), p["box_field"], p["label_field"], checkpoint=_checkpoint(ctx),
            boxes_per_batch=int(p.get("boxes_per_batch") or fiftyone_adapter.DEFAULT_BOXES_PER_BATCH))
        yield from _run_steps(ctx, steps, "TinySAM masks from boxes")


class EvaluateMasks(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_masks",
            label="TinySAM: evaluate masks",
            description="COCO-style instance-mask evaluation + per-sample mean best-match mask IoU",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        fields = _detections_fields(ctx)
        for name, label in (("pred_field", "Predictions"), ("gt_field", "Ground truth")):
            if fields:
                inputs.enum(name, fields, required=True, label=label)
            else:
                inputs.str(name, required=True, label=label)
        inputs.str("eval_key", default="tinysam_eval", required=True, label="Evaluation key",
                   description="name of the run in the App's evaluation panel (a Python identifier)")
        inputs.bool("compute_mAP", default=False, label="Compute mAP",
                    description="COCO mAP over IoU 0.50:0.95 (slower)")
        return types.Property(inputs, view=types.View(label="TinySAM: evaluate masks"))

    def execute(self, ctx):
        p = ctx.params
        summary = fiftyone_adapter.evaluate_masks(ctx.target_view(), p["pred_field"], p["gt_field"],
                                                  p["eval_key"], compute_mAP=bool(p.get("compute_mAP", False)))
        if ctx.delegated:
            ctx.set_progress(progress=1.0, label=f"evaluation {p['eval_key']} done")
        else:
            ctx.trigger("reload_dataset")
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        for name in ("tp", "fp", "fn"):
            outputs.int(name, label=name.upper())
        for name in ("precision", "recall", "mAP", "mean_best_iou"):
            outputs.float(name, label=name.replace("_", " "))
        return types.Property(outputs, view=types.View(label="TinySAM mask evaluation"))


def _detections_fields(ctx) -> list[str]:
    """Top-level Detections fields of the dataset (for the field pickers)."""
    import fiftyone as fo

    if ctx.dataset is None:
        return []
    schema = ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections)
    return sorted(schema)


def register(p):
    p.register(AutoMask)
    p.register(MaskFromBoxes)
    p.register(EvaluateMasks)
