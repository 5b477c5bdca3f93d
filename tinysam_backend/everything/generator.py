"""Segment-everything: SAM's dense grid ("dense") and TinySAM's hierarchical strategy (paper §3.4).

Hierarchical, as the official implementation computes it:

1. First round: a (points_per_side // 4)² grid of cell centres. Every prompt gives three masks; a mask is
   kept when its predicted IoU > pred_iou_thresh and its stability score >= stability_score_thresh. The
   high-confidence map is the union, over kept masks, of (logits > high_score_thresh) in original pixels.
2. Second round: around each first-round point, up to 15 points one or two strides away
   (`point_grids.second_round_points`), skipping those on the high-confidence map. Same filters.
3. Both rounds' masks (second round first) go through box NMS at box_nms_thresh on predicted IoU.
   When the second round has no points, the first round's masks are the result.

Dense is the same filtering on a points_per_side² grid in one round. Mask logits are upscaled to original
pixels (bilinear to the input frame, crop, bilinear to the image) only for masks that pass the IoU filter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..masks import MASK_THRESHOLD, decode_rle, encode_rle, encode_rle_transposed, stability_score
from ..transforms import low_res_extent, upscale_to_input_frame
from .decoders import PointDecoder, make_point_decoder, splits_into_threads
from .params import DECODERS, MODES, EverythingParams
from .point_grids import cell_centre_grid, second_round_points
from .postprocess import box_nms, box_xyxy_to_xywh, masks_to_boxes, remove_small_regions, rows_cols_to_boxes

logger = logging.getLogger(__name__)

# Pixels of upscaled float32 logits held at once while filtering (≈ 128 MiB).
_UPSCALE_PIXEL_BUDGET = 1 << 25
# Batches decoded side by side (worker threads, one intra-op thread each) by the low-rank decoder.
MAX_BATCH_WORKERS = 4
# NMS threshold of the official small-region clean-up is max(box_nms_thresh, crop_nms_thresh = 0.7).
_CROP_NMS_THRESH = 0.7

ProgressFn = Callable[[int, int], None]

__all__ = ["DECODERS", "MODES", "EverythingParams", "EverythingResult", "MaskCandidates", "run_everything",
           "segment_everything"]


@dataclass
class MaskCandidates:
    """Masks that passed the filters, as columns (one row per mask)."""

    points: np.ndarray  # (K, 2) float64 XY original pixels
    predicted_iou: np.ndarray  # (K,) float32
    stability_score: np.ndarray  # (K,) float32
    boxes: np.ndarray  # (K, 4) int64 XYXY inclusive
    areas: np.ndarray  # (K,) int64
    rles: list  # K COCO RLE dicts

    @classmethod
    def empty(cls) -> MaskCandidates:
        return cls(np.zeros((0, 2)), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.int64),
                   np.zeros(0, np.int64), [])

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def concat(cls, parts: list[MaskCandidates]) -> MaskCandidates:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.points for p in parts]), np.concatenate([p.predicted_iou for p in parts]),
                   np.concatenate([p.stability_score for p in parts]), np.concatenate([p.boxes for p in parts]),
                   np.concatenate([p.areas for p in parts]), [r for p in parts for r in p.rles])

    def take(self, idx: np.ndarray) -> MaskCandidates:
        idx = np.asarray(idx, dtype=np.int64)
        return MaskCandidates(self.points[idx], self.predicted_iou[idx], self.stability_score[idx], self.boxes[idx],
                              self.areas[idx], [self.rles[i] for i in idx])


@dataclass
class EverythingResult:
    """Records plus what it took: prompts decoded per round, seconds per stage."""

    records: list[dict]
    prompts_per_round: list[int]
    masks_before_nms: int
    timings: dict = field(default_factory=dict)

    @property
    def num_prompts(self) -> int:
        return int(sum(self.prompts_per_round))


# ------------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class _Geometry:
    """The frames of one image: model input side (1024), resized (h, w), original (H, W)."""

    image_size: int
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    @classmethod
    def of(cls, emb, image_size: int) -> _Geometry:
        return cls(int(image_size), tuple(int(v) for v in emb.input_size), tuple(int(v) for v in emb.original_size))

    def to_input_frame(self, points: np.ndarray) -> np.ndarray:
        """(B, 2) XY original pixels → float64 XY in the model's input frame."""
        (h, w), (ih, iw) = self.original_size, self.input_size
        out = np.array(points, dtype=np.float64, copy=True)
        out[:, 0] *= iw / w
        out[:, 1] *= ih / h
        return out

    @property
    def low_res_rows(self) -> int:
        """Rows of the low-res logits (image_size / 4 of them) that the crop to the resized image reads."""
        return low_res_extent(self.image_size // 4, self.image_size, self.input_size)[0]

    def upscale_transposed(self, low_res: torch.Tensor) -> np.ndarray:
        """(K, 256, 256) logits → (K, W, H) float32 logits in original pixels, transposed.

        Bilinear to the input frame, crop to the resized image, bilinear to the original size — done on
        the transposed logits so that the result is already in the column-major layout COCO RLE wants. Only the
        low-res rows the crop reads are used (`low_res_rows`), so logits cut below them are accepted.
        """
        # Contiguous before interpolating (ATen's kernel is ~20 % slower on the transposed view, same values);
        # the crop stays a strided view: every consumer reads it once or copies it anyway.
        x = low_res.transpose(-1, -2).contiguous().unsqueeze(1).float()
        x = upscale_to_input_frame(x, self.image_size, (self.input_size[1], self.input_size[0]))
        if tuple(self.input_size) != tuple(self.original_size):
            x = F.interpolate(x, (self.original_size[1], self.original_size[0]), mode="bilinear", align_corners=False)
        return x[:, 0].cpu().numpy()


class _HighConfidenceMap:
    """Hierarchical mode's map of first-round pixels already covered with confidence: the union, over kept masks,
    of logits > high_score_thresh in original pixels. Filled from worker threads; kept transposed like the logits."""

    def __init__(self, original_size: tuple[int, int]) -> None:
        h, w = original_size
        self._transposed = np.zeros((w, h), dtype=bool)
        self._lock = threading.Lock()

    def add(self, confident_t: np.ndarray) -> None:
        """(W, H) bool, transposed, from one chunk of kept masks."""
        with self._lock:
            np.logical_or(self._transposed, confident_t, out=self._transposed)

    def mask(self) -> np.ndarray:
        """(H, W) bool."""
        return self._transposed.T


# ----------------------------------------------------------------------------------------------- filtering
def _filter_masks(decoded, points: np.ndarray, geometry: _Geometry, params: EverythingParams,
                  high: _HighConfidenceMap | None) -> MaskCandidates:
    """One decoded batch → the masks that pass the predicted-IoU and stability filters, as candidates.

    Logits are upscaled only for masks above the IoU threshold, in chunks of at most _UPSCALE_PIXEL_BUDGET pixels.
    """
    iou = decoded.iou.reshape(-1)
    flat = np.arange(iou.shape[0])
    if params.pred_iou_thresh > 0.0:
        flat = flat[iou > np.float32(params.pred_iou_thresh)]
    if flat.size == 0:
        return MaskCandidates.empty()
    h, w = geometry.original_size
    chunk = max(1, _UPSCALE_PIXEL_BUDGET // (h * w))
    parts = []
    for start in range(0, flat.size, chunk):
        idx = flat[start:start + chunk]
        logits_t = geometry.upscale_transposed(decoded.low_res(idx, geometry.low_res_rows))  # (k, W, H)
        parts.append(_stable_candidates(idx, logits_t, iou, points, params, high))
    return MaskCandidates.concat(parts)


def _stable_candidates(idx: np.ndarray, logits_t: np.ndarray, iou: np.ndarray, points: np.ndarray,
                       params: EverythingParams, high: _HighConfidenceMap | None) -> MaskCandidates:
    """Upscaled transposed logits (k, W, H) of masks `idx` (prompt · 3 + mask) → those stable enough, with their
    boxes, areas and RLEs; their confident pixels go into `high` when given."""
    stability = stability_score(logits_t, MASK_THRESHOLD, params.stability_score_offset)
    if params.stability_score_thresh > 0.0:
        ok = stability >= np.float32(params.stability_score_thresh)
        idx, logits_t, stability = idx[ok], logits_t[ok], stability[ok]
        if idx.size == 0:
            return MaskCandidates.empty()
    if high is not None:
        high.add((logits_t > params.high_score_thresh).any(axis=0))
    masks_t = logits_t > MASK_THRESHOLD  # (k, W, H)
    del logits_t
    # In the transposed frame axis 1 is x and axis 2 is y.
    boxes = rows_cols_to_boxes(masks_t.any(axis=1), masks_t.any(axis=2))
    return MaskCandidates(
        points=points[idx // 3],
        predicted_iou=iou[idx].astype(np.float32),
        stability_score=stability.astype(np.float32),
        boxes=boxes,
        areas=np.count_nonzero(masks_t, axis=(1, 2)).astype(np.int64),
        rles=encode_rle_transposed(masks_t),
    )


# ------------------------------------------------------------------------------------- batches and threads
def batch_workers(decoder: PointDecoder) -> int:
    """Worker threads that decode batches side by side: with the low-rank decoder and several intra-op threads,
    up to MAX_BATCH_WORKERS, each with its share of the intra-op threads (its many small ops parallelise poorly
    inside one op); one otherwise."""
    return min(MAX_BATCH_WORKERS, torch.get_num_threads()) if splits_into_threads(decoder) else 1


@contextmanager
def _in_order(work: Callable, items: list, workers: int) -> Iterator[Iterator]:
    """`work` over `items`, results in item order: in `workers` threads (one intra-op thread share each) or inline.

    Leaving the block early (an exception, e.g. a progress callback that cancels) drops the queued items."""
    workers = min(workers, len(items))
    if workers <= 1:
        yield map(work, items)
        return
    threads_each = max(1, torch.get_num_threads() // workers)

    def in_worker(item):
        torch.set_num_threads(threads_each)  # this worker thread's intra-op threads only
        return work(item)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool.map(in_worker, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _PromptProgress:
    """Prompts decoded / planned over the rounds of one run, reported after every batch (the plan grows when the
    second round is known); the callback may raise to cancel."""

    def __init__(self, callback: ProgressFn | None) -> None:
        self.callback = callback
        self.done = 0
        self.planned = 0

    def plan(self, n: int) -> None:
        self.planned += n

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.planned)


@dataclass(frozen=True)
class _Round:
    """What every round of one run shares."""

    decoder: PointDecoder
    geometry: _Geometry
    params: EverythingParams
    workers: int
    progress: _PromptProgress
    timings: dict  # decode_s, filter_s: summed over worker threads


def _masks_for_points(grid: np.ndarray, run: _Round, high: _HighConfidenceMap | None = None) -> MaskCandidates:
    """Normalised points → decoded in batches of points_per_batch, filtered; with `high`, the confident pixels of
    the kept masks are added to it."""
    h, w = run.geometry.original_size
    points = grid * np.array([w, h])[None, :]
    run.progress.plan(len(points))
    batch = run.params.points_per_batch
    batches = [points[start:start + batch] for start in range(0, len(points), batch)]

    def one_batch(pts: np.ndarray) -> tuple[MaskCandidates, float, float]:
        with torch.inference_mode():
            t0 = time.perf_counter()
            decoded = run.decoder(run.geometry.to_input_frame(pts))
            t1 = time.perf_counter()
            return _filter_masks(decoded, pts, run.geometry, run.params, high), t1 - t0, time.perf_counter() - t1

    parts = []
    with _in_order(one_batch, batches, run.workers) as results:
        for pts, (cands, decode_s, filter_s) in zip(batches, results):
            parts.append(cands)
            run.timings["decode_s"] += decode_s
            run.timings["filter_s"] += filter_s
            run.progress.advance(len(pts))
    return MaskCandidates.concat(parts)


# ------------------------------------------------------------------------------------------------- rounds
def _dense(run: _Round) -> tuple[MaskCandidates, list[int]]:
    """SAM's grid: points_per_side² prompts in one round."""
    grid = cell_centre_grid(run.params.points_per_side)
    return _masks_for_points(grid, run), [len(grid)]


def _hierarchical(run: _Round) -> tuple[MaskCandidates, list[int]]:
    """TinySAM's two rounds: a sparse grid, then points around it where the first round is not confident."""
    p = run.params
    first_grid = cell_centre_grid(p.points_per_side // 4)
    high = _HighConfidenceMap(run.geometry.original_size)
    first = _masks_for_points(first_grid, run, high)
    second_grid = second_round_points(first_grid, run.geometry.original_size, p.points_per_side, high.mask())
    logger.info("hierarchical: %d first-round prompts kept %d masks; %d second-round prompts",
                len(first_grid), len(first), len(second_grid))
    if not len(second_grid):
        return first, [len(first_grid), 0]
    second = _masks_for_points(second_grid, run)
    return MaskCandidates.concat([second, first]), [len(first_grid), len(second_grid)]


# ------------------------------------------------------------------------------------------------ records
def _select(cands: MaskCandidates, params: EverythingParams) -> MaskCandidates:
    """Box NMS on predicted IoU, then (min_mask_region_area > 0) the small-region clean-up."""
    cands = cands.take(box_nms(cands.boxes.astype(np.float64), cands.predicted_iou, params.box_nms_thresh))
    if params.min_mask_region_area > 0 and len(cands):
        cands = remove_small_regions_and_duplicates(cands, params.min_mask_region_area,
                                                    max(params.box_nms_thresh, _CROP_NMS_THRESH))
    return cands


def _to_records(cands: MaskCandidates) -> list[dict]:
    xywh = box_xyxy_to_xywh(cands.boxes)
    return [
        {
            "segmentation": cands.rles[i],
            "area": int(cands.areas[i]),
            "bbox": [int(v) for v in xywh[i]],
            "predicted_iou": float(cands.predicted_iou[i]),
            "point_coords": [[float(cands.points[i, 0]), float(cands.points[i, 1])]],
            "stability_score": float(cands.stability_score[i]),
        }
        for i in range(len(cands))
    ]


def remove_small_regions_and_duplicates(cands: MaskCandidates, min_area: int, nms_thresh: float) -> MaskCandidates:
    """Fill small holes and drop small islands, then NMS preferring masks that did not change."""
    masks, scores = [], []
    for rle in cands.rles:
        mask = decode_rle(rle)
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        masks.append(mask)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    stacked = np.stack(masks)
    boxes = masks_to_boxes(stacked)
    keep = box_nms(boxes.astype(np.float64), np.asarray(scores), nms_thresh)
    out = cands.take(np.arange(len(cands)))
    for i in keep:
        if scores[i] == 0.0:
            out.rles[i] = encode_rle(stacked[i][None])[0]
            out.boxes[i] = boxes[i]
            out.areas[i] = int(stacked[i].sum())
    return out.take(keep)


def run_everything(predictor, image, params: EverythingParams, progress: ProgressFn | None = None
                   ) -> EverythingResult:
    """Segment everything in `image` (anything `Predictor.embed` takes, or an `ImageEmbedding`)."""
    from ..predictor import ImageEmbedding

    t_start = time.perf_counter()
    emb = image if isinstance(image, ImageEmbedding) else predictor.embed(image)
    t_embed = time.perf_counter()
    model = predictor.model
    with torch.inference_mode():
        decoder = make_point_decoder(model, emb.features, params.decoder, context=emb.context)
        run = _Round(decoder, _Geometry.of(emb, model.image_size), params, batch_workers(decoder),
                     _PromptProgress(progress), {"decode_s": 0.0, "filter_s": 0.0})
        cands, per_round = _dense(run) if params.mode == "dense" else _hierarchical(run)
        t_nms = time.perf_counter()
        records = _to_records(_select(cands, params))
    t_end = time.perf_counter()
    timings = dict(run.timings, embed_s=t_embed - t_start, records_s=t_end - t_nms, total_s=t_end - t_start,
                   decoder=decoder.name)
    logger.info("everything (%s): %d prompts, %d masks before NMS, %d records in %.2f s", params.mode,
                sum(per_round), len(cands), len(records), t_end - t_start)
    return EverythingResult(records, per_round, len(cands), timings)


def segment_everything(predictor, image, *, progress: ProgressFn | None = None, **params) -> list[dict]:
    """Masks of everything in an image, one record per mask.

    predictor: a `Predictor`; image: anything `Predictor.embed` accepts, or an `ImageEmbedding` already
    computed (not encoded again). params: fields of `EverythingParams` by name (mode "hierarchical" (TinySAM) or
    "dense" (SAM's grid), points_per_side, pred_iou_thresh, …); the others keep its defaults, unknown names or
    values out of range raise ValueError. progress: called as progress(prompts_done, prompts_planned) after every
    batch (the plan grows when the second round is known).

    Returns records sorted by predicted IoU (highest first): `segmentation` COCO RLE {"size": [H, W],
    "counts": str}, `bbox` [x, y, w, h], `area` (pixels), `predicted_iou`, `stability_score`, `point_coords`
    [[x, y]] (original pixels).
    """
    return run_everything(predictor, image, EverythingParams.from_overrides(**params), progress).records
