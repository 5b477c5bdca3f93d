"""TinySAM operators for FiftyOne (plugin `@tinysam/tinysam`).

Each operator is thin: read `ctx.params` → one call into `tinysam_backend.fiftyone_adapter` → progress →
reload. Parameter names and defaults are the library's (segment-everything's from `EverythingParams`).
Requires `tinysam-backend` installed in FiftyOne's environment (`pip install "tinysam-backend[fiftyone]"` or
`pip install -e <checkout>`).

Scale-out: with `num_shards` = N > 1, `auto_mask` and `mask_from_boxes` queue N delegated operations, each over a
disjoint shard of the target view (`tinysam_backend.fiftyone_adapter.common.shard_of`), so N
`fiftyone delegated launch` workers sharing the database run them in parallel. Each shard resumes like a plain
run (samples already done are skipped), so a crashed shard is simply queued again.
"""

from __future__ import annotations

import copy
import json
import logging

import fiftyone.operators as foo
from fiftyone.operators import types
from fiftyone.operators.executor import ExecutionOptions

from tinysam_backend import fiftyone_adapter
from tinysam_backend.everything import EverythingParams
from tinysam_backend.fiftyone_adapter import common

logger = logging.getLogger(__name__)

# Views larger than this default to delegated execution in the App (`fiftyone delegated launch` runs them).
DELEGATE_ABOVE_SAMPLES = 25
# Immediate runs send the App at most this many progress events per second.
PROGRESS_EVENTS_PER_SECOND = 2.0
# Delegated runs record progress inside a large image at most this often (one database write each).
DELEGATED_PROGRESS_SECONDS = 2.0

def _everything_inputs(inputs):
    """One form field per `EverythingParams` field: its name, default and help text are the library's."""
    for p in EverythingParams.parameters():
        label = p.name.replace("_", " ")
        if p.choices is not None:
            inputs.enum(p.name, list(p.choices), default=p.default, label=label, description=p.help)
        else:
            add = inputs.int if p.kind is int else inputs.float
            add(p.name, default=p.default, label=label, description=p.help)


def _everything_params(params: dict) -> dict:
    """The form's segment-everything values, by field kind (unset ones keep the library's defaults)."""
    return {p.name: p.kind(params[p.name]) for p in EverythingParams.parameters() if params.get(p.name) is not None}


def _checkpoint_input(inputs):
    inputs.str("checkpoint", label="Checkpoint",
               description="fp32 state dict (.pth/.safetensors) or quantized artifact directory; "
                           "empty: the configured default (TINYSAM_CHECKPOINT)")


def _shards_input(inputs):
    inputs.int("num_shards", default=1, label="Delegated shards",
               description="split the run into this many delegated operations over disjoint shards of the "
                           "samples, for as many `fiftyone delegated launch` workers (1: one operation)")


def _common_inputs(inputs):
    inputs.bool("overwrite", default=False, label="Overwrite",
                description="redo samples that already have masks (otherwise they are skipped: a rerun resumes)")
    _checkpoint_input(inputs)
    _shards_input(inputs)


def _execution_options(ctx):
    """Immediate or delegated; targets of more than DELEGATE_ABOVE_SAMPLES samples default to delegated. A
    sharded run is queued from an immediate call (it only queues its shards)."""
    if int(ctx.params.get("num_shards") or 1) > 1 and "shard_index" not in ctx.params:
        return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=False)
    big = ctx.dataset is not None and len(ctx.target_view()) > DELEGATE_ABOVE_SAMPLES
    return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                            default_choice_to_delegated=big)


def _queue_shards(operator, ctx, num_shards: int) -> dict:
    """Queue one delegated operation per shard (the same request, with `shard_index`); returns their ids."""
    from fiftyone.operators.delegated import DelegatedOperationService

    common.check_range("num_shards", num_shards, 1, None, integer=True)
    service = DelegatedOperationService()
    ids = []
    for k in range(num_shards):
        request = {key: copy.deepcopy(value) for key, value in ctx.request_params.items()
                   if key not in ("run_doc", "target", "results", "request_delegation")}
        request["params"] = {**request.get("params", {}), "shard_index": k, "num_shards": num_shards}
        request["delegated"] = True
        op = service.queue_operation(operator=operator.uri, label=f"{operator.config.label} [shard {k + 1}/{num_shards}]",
                                     context={"request_params": request})
        ids.append(str(op.id))
    logger.info("%s: queued %d shards %s", operator.uri, num_shards, ids)
    return {"shards": num_shards, "operation_ids": ids}


def _target(ctx):
    view = ctx.target_view()
    if "shard_index" in ctx.params:
        view = common.shard_view(view, int(ctx.params["shard_index"]), int(ctx.params["num_shards"]))
    return view


def _failed_message(what: str, summary: dict) -> str:
    return (f"{what}: {len(summary['failed'])} samples failed (left unset; rerun to retry), the others were written. "
            f"Summary: {json.dumps(summary)}")


def _run(operator, ctx, make_steps, what: str):
    """Shards → queue them; delegated → run, progress on the operation, the summary as output (an error when
    samples failed, so the run is not shown as a clean success); immediate → a generator of App events."""
    num_shards = int(ctx.params.get("num_shards") or 1)
    if num_shards > 1 and "shard_index" not in ctx.params:
        return _queue_shards(operator, ctx, num_shards)
    if ctx.delegated:
        import time

        state = {"done": 0, "total": 0, "last": 0.0}

        def report(done):
            state["last"] = time.monotonic()
            total = state["total"]
            ctx.set_progress(progress=done / total if total else 1.0, label=f"{what}: {done:.1f}/{total} samples")

        def within(fraction):  # inside one image: at most one database write per DELEGATED_PROGRESS_SECONDS
            if time.monotonic() - state["last"] >= DELEGATED_PROGRESS_SECONDS:
                report(state["done"] + fraction)

        steps = make_steps(_target(ctx), within)
        while True:
            try:
                state["done"], state["total"] = next(steps)
            except StopIteration as stop:
                summary = stop.value
                break
            report(state["done"])
        logger.info("%s done: %s", what, summary)
        if summary["failed"]:
            raise RuntimeError(_failed_message(what, summary))
        return summary
    return _immediate(ctx, make_steps(_target(ctx), None), what)


def _immediate(ctx, steps, what):
    import time

    last = 0.0
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            summary = stop.value
            break
        now = time.monotonic()
        if done in (0, total) or now - last >= 1.0 / PROGRESS_EVENTS_PER_SECOND:
            last = now
            yield ctx.ops.set_progress(label=f"{what}: {done}/{total} samples", progress=done / total if total else 1.0)
    logger.info("%s done: %s", what, summary)
    yield ctx.ops.reload_dataset()
    if summary["failed"]:
        yield ctx.ops.notify(_failed_message(what, summary), variant="warning")
    else:
        yield ctx.ops.notify(f"{what}: {summary['samples']} samples, {summary['masks']} masks, "
                             f"{summary['skipped']} already done", variant="success")


def _summary_output(ctx):
    outputs = types.Object()
    if "operation_ids" in (ctx.results or {}):
        outputs.int("shards", label="delegated shards queued")
        outputs.list("operation_ids", types.String(), label="operation ids")
    else:
        for name in ("samples", "skipped", "masks"):
            outputs.int(name, label=name)
        outputs.list("failed", types.String(), label="failed sample ids")
    return types.Property(outputs)


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
        inputs.str("output_dir", label="Mask directory",
                   description="write masks as PNGs here (mask_path) instead of in the samples; "
                               "recommended for big datasets")
        _everything_inputs(inputs)
        _common_inputs(inputs)
        return types.Property(inputs, view=types.View(label="TinySAM: auto-mask everything"))

    def execute(self, ctx):
        p = ctx.params
        return _run(self, ctx, lambda view, within: fiftyone_adapter.iter_auto_mask(
            view, p["label_field"], checkpoint=p.get("checkpoint") or None, output_dir=p.get("output_dir") or None,
            overwrite=bool(p.get("overwrite", False)), within=within, **_everything_params(p)), "TinySAM auto-mask")

    def resolve_output(self, ctx):
        return _summary_output(ctx)


class MaskFromBoxes(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="mask_from_boxes",
            label="TinySAM: masks from boxes",
            description="Box (or keypoint) prompts from a field → instance masks (zero-shot instance segmentation)",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):
        return _execution_options(ctx)

    def resolve_input(self, ctx):
        from tinysam_backend.masks import DEFAULT_PROMPTS_PER_BATCH

        inputs = types.Object()
        ctx.target_view()
        fields = _label_fields(ctx, prompts=True)
        if fields:
            inputs.enum("prompt_field", fields, required=True, label="Prompt field",
                        description="Detections (boxes) or Keypoints (points) field whose labels are the prompts")
        else:
            inputs.str("prompt_field", required=True, label="Prompt field",
                       description="Detections (boxes) or Keypoints (points) field whose labels are the prompts")
        inputs.str("label_field", default="tinysam_masks", required=True, label="Label field",
                   description="Detections field to write the masks to (labels copied from the prompts)")
        inputs.int("prompts_per_batch", default=DEFAULT_PROMPTS_PER_BATCH, label="Prompts per batch",
                   description="prompts decoded at once")
        _common_inputs(inputs)
        return types.Property(inputs, view=types.View(label="TinySAM: masks from boxes"))

    def execute(self, ctx):
        from tinysam_backend.masks import DEFAULT_PROMPTS_PER_BATCH

        p = ctx.params
        return _run(self, ctx, lambda view, within: fiftyone_adapter.iter_mask_from_boxes(
            view, p["prompt_field"], p["label_field"], checkpoint=p.get("checkpoint") or None,
            overwrite=bool(p.get("overwrite", False)), within=within,
            prompts_per_batch=int(p.get("prompts_per_batch") or DEFAULT_PROMPTS_PER_BATCH)),
            "TinySAM masks from prompts")

    def resolve_output(self, ctx):
        return _summary_output(ctx)


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
        fields = _label_fields(ctx, prompts=False)
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
                                                  p["eval_key"], compute_mAP=bool(p.get("compute_mAP", False)),
                                                  progress=False)
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


def _label_fields(ctx, prompts: bool) -> list[str]:
    """Top-level Detections fields of the dataset (and Keypoints fields for prompts), for the field pickers."""
    import fiftyone as fo

    if ctx.dataset is None:
        return []
    kinds = (fo.Detections, fo.Keypoints) if prompts else (fo.Detections,)
    names = set()
    for kind in kinds:
        names |= set(ctx.dataset.get_field_schema(embedded_doc_type=kind))
    return sorted(names)


def register(p):
    p.register(AutoMask)
    p.register(MaskFromBoxes)
    p.register(EvaluateMasks)
