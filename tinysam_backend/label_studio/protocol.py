"""The ML-backend protocol as pure functions: request JSON → prompts, masks → Label Studio result JSON.

Coordinates: Label Studio regions give `value.x/y/width/height` in percent of `original_width/height`; the
predictor takes pixels of the image as decoded (EXIF applied), X right, Y down. A mask goes back as a brush
region whose RLE has exactly `original_height × original_width` pixels; in the result dicts the RLE is a uint8
array, written to JSON by `dumps`.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PromptError, TinySAMError
from .brush_rle import mask_to_brush_rle, rle_json
from .label_config import ControlTag, LabelConfig

KEYPOINT_TYPES = ("keypointlabels", "keypoint")
RECTANGLE_TYPES = ("rectanglelabels", "rectangle")
MAX_CONTEXT_REGIONS = 1000  # regions in one interactive request (only keypoints and the latest rectangle prompt)
MAX_TASKS = 10_000  # tasks in one /predict (Label Studio sends one per request once told, see backend.py)
DEFAULT_MAX_POINTS = 64  # keypoints per prompt (TINYSAM_LS_MAX_POINTS); an annotator makes a handful


class RequestError(TinySAMError, ValueError):
    """A request the backend cannot answer; `status` is the HTTP status to send (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------ request parsing
@dataclass(frozen=True)
class PredictRequest:
    tasks: tuple[dict, ...]
    label_config: str
    context_regions: tuple[dict, ...] | None  # None: batch pre-annotation; a tuple: interactive clicks
    project: str | None


def parse_predict_request(body: Any) -> PredictRequest:
    """The JSON body of `POST /predict` → `PredictRequest`. Raises RequestError (400/422) naming what is wrong."""
    if not isinstance(body, dict):
        raise RequestError(f"expected a JSON object with 'tasks' and 'label_config', got {type(body).__name__}")
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise RequestError(f"'tasks' must be a non-empty list of task objects, got {_describe(tasks)}")
    if len(tasks) > MAX_TASKS:
        raise RequestError(f"'tasks' holds {len(tasks)} tasks, more than the limit of {MAX_TASKS} per request", 422)
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise RequestError(f"tasks[{i}] must be an object, got {_describe(task)}")
        if not isinstance(task.get("data"), dict):
            raise RequestError(f"tasks[{i}].data must be an object with the image URL, got {_describe(task.get('data'))}")
    label_config = body.get("label_config")
    if not isinstance(label_config, str) or not label_config.strip():
        raise RequestError(f"'label_config' must be the project's labeling config XML, got {_describe(label_config)}")
    params = body.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(f"'params' must be an object, got {_describe(params)}")
    context = params.get("context")
    regions: tuple[dict, ...] | None = None
    if context is not None:
        if not isinstance(context, dict):
            raise RequestError(f"'params.context' must be an object with 'result', got {_describe(context)}")
        result = context.get("result")
        if result is None:
            result = []
        if not isinstance(result, list):
            raise RequestError(f"'params.context.result' must be a list of regions, got {_describe(result)}")
        if len(result) > MAX_CONTEXT_REGIONS:
            raise RequestError(f"'params.context.result' holds {len(result)} regions, more than the limit of "
                               f"{MAX_CONTEXT_REGIONS} per request", 422)
        for i, region in enumerate(result):
            if not isinstance(region, dict):
                raise RequestError(f"params.context.result[{i}] must be an object, got {_describe(region)}")
        regions = tuple(result)
    project = body.get("project")
    return PredictRequest(tasks=tuple(tasks), label_config=label_config, context_regions=regions,
                          project=None if project is None else str(project))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"


# ------------------------------------------------------------------------------------------- context → prompt
@dataclass(frozen=True)
class ClickPrompt:
    """One interactive prompt in percent of the image, as Label Studio sent it.

    points_pct: (N, 2) X, Y in percent; point_labels (N,) 1 = foreground, 0 = background; box_pct: X0, Y0, X1, Y1 in
    percent or None. original_size: (H, W) that Label Studio displays. history: a hashable description of the
    prompt in the order it was built (clicks, then the box), used to find the previous click's logits.
    """

    to_name: str
    label: str | None
    points_pct: np.ndarray
    point_labels: np.ndarray
    box_pct: tuple[float, float, float, float] | None
    original_size: tuple[int, int]
    history: tuple

    def previous_history(self) -> tuple | None:
        """The history of the prompt before the latest element, or None for a first click."""
        return self.history[:-1] if len(self.history) > 1 else None


def _number(region: dict, key: str, where: str) -> float:
    value = (region.get("value") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PromptError(f"{where}.value.{key} must be a finite number (percent), got {_describe(value)}")
    return float(value)


def _size(region: dict, where: str) -> tuple[int, int]:
    w, h = region.get("original_width"), region.get("original_height")
    for key, v in (("original_width", w), ("original_height", h)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1 or v != int(v):
            raise PromptError(f"{where}.{key} must be a positive integer (image pixels), got {_describe(v)}")
    return int(h), int(w)


def _region_label(region: dict) -> str | None:
    value = region.get("value") or {}
    # `value.<type>` in stored results; the labeling interface also puts a smart region's labels in `value.labels`.
    for labels in (value.get(region.get("type")), value.get("labels")):
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def rotated_box_extent(x: float, y: float, width: float, height: float, rotation: float,
                       image_w: float, image_h: float) -> tuple[float, float, float, float]:
    """Axis-aligned X0, Y0, X1, Y1 (percent) around a rectangle Label Studio rotated by `rotation` degrees
    clockwise about its top-left corner (x, y). Rotation happens in pixels, so the aspect ratio matters."""
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    px, py = x * image_w / 100.0, y * image_h / 100.0
    w, h = width * image_w / 100.0, height * image_h / 100.0
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    xs = [px + cx * cos - cy * sin for cx, cy in corners]
    ys = [py + cx * sin + cy * cos for cx, cy in corners]
    return (min(xs) * 100.0 / image_w, min(ys) * 100.0 / image_h,
            max(xs) * 100.0 / image_w, max(ys) * 100.0 / image_h)


def prompt_from_context(regions: tuple[dict, ...] | list[dict], config: LabelConfig,
                        max_points: int = DEFAULT_MAX_POINTS) -> ClickPrompt:
    """Interactive context regions → one prompt: every keypoint (positive unless `is_positive` is false) and the
    latest rectangle, on the Image of the latest prompt region. Regions of other types are ignored.

    Raises PromptError (clicks outside the image, malformed values, more than `max_points` keypoints: the decoder's
    cost grows with them) and LabelConfigError (unknown Image).
    """
    usable = [(i, r) for i, r in enumerate(regions) if r.get("type") in KEYPOINT_TYPES + RECTANGLE_TYPES]
    n_points = sum(1 for _, r in usable if r.get("type") in KEYPOINT_TYPES)
    if n_points > max_points:
        raise PromptError(f"params.context.result holds {n_points} keypoints, more than the limit of {max_points} per "
                          "request (TINYSAM_LS_MAX_POINTS); remove some points or start a new region")
    if not usable:
        types = sorted({str(r.get("type")) for r in regions})
        raise PromptError("params.context.result holds no keypoint or rectangle region to prompt with "
                          f"(types received: {types or 'none'}); expected regions of type "
                          f"{list(KEYPOINT_TYPES + RECTANGLE_TYPES)} from a smart KeyPointLabels/RectangleLabels tag")
    to_name = usable[-1][1].get("to_name")
    if not isinstance(to_name, str) or not to_name:
        raise PromptError(f"params.context.result[{usable[-1][0]}].to_name must name the Image tag, got "
                          f"{_describe(to_name)}")
    config.image_key(to_name)  # raises when the config has no such Image
    size: tuple[int, int] | None = None
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    history: list[tuple] = []
    box: tuple[float, float, float, float] | None = None
    label: str | None = None
    for i, region in usable:
        if region.get("to_name") != to_name:
            continue  # a prompt on another Image of the same task
        where = f"params.context.result[{i}]"
        if not isinstance(region.get("value"), dict):
            raise PromptError(f"{where}.value must be an object with x, y (percent), got {_describe(region.get('value'))}")
        rsize = _size(region, where)
        if size is None:
            size = rsize
        elif rsize != size:
            raise PromptError(f"{where} has original size {rsize[1]}x{rsize[0]}, other regions {size[1]}x{size[0]}")
        rotation = region.get("image_rotation", 0) or 0
        if not isinstance(rotation, (int, float)) or isinstance(rotation, bool) or rotation % 360 != 0:
            raise PromptError(f"{where}.image_rotation is {_describe(rotation)}: prompts on a rotated image are not "
                              "supported; reset the rotation in the labeling interface")
        if region["type"] in KEYPOINT_TYPES:
            x, y = _number(region, "x", where), _number(region, "y", where)
            if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
                raise PromptError(f"{where}: click at x={x}%, y={y}% is outside the image (expected 0..100 percent)")
            positive = region.get("is_positive", True)
            if positive is None:
                positive = True
            if not isinstance(positive, bool):
                raise PromptError(f"{where}.is_positive must be true or false, got {_describe(positive)}")
            points.append((x, y))
            labels.append(1 if positive else 0)
            history.append(("point", round(x, 4), round(y, 4), int(positive)))
        else:
            x, y = _number(region, "x", where), _number(region, "y", where)
            w, h = _number(region, "width", where), _number(region, "height", where)
            if w < 0 or h < 0:
                raise PromptError(f"{where}: rectangle width/height must be >= 0, got {w}, {h}")
            rotation_box = (region.get("value") or {}).get("rotation", 0) or 0
            if not isinstance(rotation_box, (int, float)) or isinstance(rotation_box, bool) \
                    or not math.isfinite(rotation_box):
                raise PromptError(f"{where}.value.rotation must be a number of degrees, got {_describe(rotation_box)}")
            x0, y0, x1, y1 = rotated_box_extent(x, y, w, h, float(rotation_box), size[1], size[0])
            if x1 <= 0.0 or y1 <= 0.0 or x0 >= 100.0 or y0 >= 100.0:
                raise PromptError(f"{where}: rectangle x={x}%, y={y}%, width={w}%, height={h}% lies outside the image")
            box = (max(x0, 0.0), max(y0, 0.0), min(x1, 100.0), min(y1, 100.0))
            history = [hh for hh in history if hh[0] != "box"]  # only the latest rectangle counts
            history.append(("box",) + tuple(round(v, 4) for v in box))
        label = _region_label(region) or label
    if size is None:  # cannot happen: the latest usable region names to_name
        raise PromptError(f"no region on Image {to_name!r}")
    return ClickPrompt(
        to_name=to_name, label=label,
        points_pct=np.asarray(points, dtype=np.float64).reshape(-1, 2),
        point_labels=np.asarray(labels, dtype=np.int64),
        box_pct=box, original_size=size, history=tuple(history))


def prompt_to_pixels(prompt: ClickPrompt, image_size: tuple[int, int]
                     ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Percent → pixels of the decoded image (H, W): (point_coords (N,2) or None, point_labels or None, box or None)."""
    h, w = image_size
    scale = np.array([w / 100.0, h / 100.0])
    coords = labels = box = None
    if len(prompt.points_pct):
        coords = prompt.points_pct * scale
        labels = prompt.point_labels
    if prompt.box_pct is not None:
        box = np.array(prompt.box_pct, dtype=np.float64) * np.concatenate([scale, scale])
    return coords, labels, box


# -------------------------------------------------------------------------------------------- masks → results
def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H × W bool mask → size (H', W') by nearest neighbour (pixel centres)."""
    h, w = mask.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return mask
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def brush_region(mask: np.ndarray, brush: ControlTag, to_name: str, label: str | None, score: float,
                 region_id: str | None = None) -> dict:
    """An H × W bool mask (original image size) → one Label Studio brush result region."""
    h, w = mask.shape
    value: dict[str, Any] = {"format": "rle", "rle": mask_to_brush_rle(mask)}
    if brush.type == "brushlabels":
        value["brushlabels"] = [label] if label is not None else []
    region = {
        "from_name": brush.name,
        "to_name": to_name,
        "type": brush.type,
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": value,
        "score": float(score),
        "readonly": False,
    }
    if region_id is not None:
        region["id"] = region_id
    return region


def prediction(regions: list[dict], model_version: str, score: float | None = None) -> dict:
    """The per-task answer: `{"result": [...], "score": s, "model_version": v}`; score defaults to the regions' mean."""
    if score is None:
        score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
    return {"result": regions, "score": float(score), "model_version": model_version}


def task_image_reference(task: dict, config: LabelConfig, to_name: str) -> str:
    """The image URL of a task for an Image tag: `task["data"][key]`, where the Image tag has value="$key"."""
    key = config.image_key(to_name)
    ref = task.get("data", {}).get(key)
    if not isinstance(ref, str) or not ref.strip():
        raise RequestError(f"task {task.get('id')!r} has no image URL under data.{key} (Image tag {to_name!r}); got "
                           f"{_describe(ref)}", 422)
    return ref.strip()


def dumps(body: Any) -> bytes:
    """JSON bytes of a response body; brush RLE (1-D uint8 arrays) become lists of ints, written by `rle_json`.

    A speckled mask's RLE has ~10⁵ bytes, which `json.dumps` writes in ~15 ms as a list; here each array is
    written once by table lookup and spliced in at a placeholder that no other string of the body can hold."""
    arrays: list[np.ndarray] = []
    marker = f"rle-{secrets.token_hex(12)}-"

    def placeholder(value: Any) -> str:
        if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
            arrays.append(value)
            return f"{marker}{len(arrays) - 1}"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    text = json.dumps(body, default=placeholder).encode()
    if not arrays:
        return text
    pieces = text.split(f'"{marker}'.encode())
    out = [pieces[0]]
    for piece in pieces[1:]:
        index, rest = piece.split(b'"', 1)
        out += [rle_json(arrays[int(index)]), rest]
    return b"".join(out)
