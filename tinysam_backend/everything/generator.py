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
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .decoders import PointDecoder, make_point_decoder, splits_into_threads
from .point_grids import cell_centre_grid, second_round_points
from .postprocess import (
    MASK_THRESHOLD,
    box_nms,
    box_xyxy_to_xywh,
    decode_rle,
    encode_rle,
    encode_rle_transposed,
    masks_to_boxes,
    remove_small_regions,
    rows_cols_to_boxes,
)

logger = logging.getLogger(__name__)

MODES = ("hierarchical", "dense")
DECODERS = ("auto", "fast", "model")
# Pixels of upscaled float32 logits held at once while filtering (≈ 128 MiB).
_UPSCALE_PIXEL_BUDGET = 1 << 25
# Batches decoded side by side (worker threads, one intra-op thread each) by the low-rank decoder.
MAX_BATCH_WORKERS = 4
# NMS threshold of the official small-region clean-up is max(box_nms_thresh, crop_nms_thresh = 0.7).
_CROP_NMS_THRESH = 0.7

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class EverythingParams:
    """Parameters of segment-everything (the same names in the API, the CLI, Label Studio and FiftyOne).

    points_per_side: side of the dense grid (hierarchical: the first round uses points_per_side // 4);
    pred_iou_thresh: keep masks whose predicted IoU is above it (0 or less: no filter);
    stability_score_thresh: keep masks whose stability score is at least it (0 or less: no filter);
    stability_score_offset: the logit offset of the stability score;
    high_score_thresh: logit above which a first-round mask pixel is "high confidence" (hierarchical);
    box_nms_thresh: box IoU above which the lower-scored mask is suppressed (1.0: none);
    min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels;
    points_per_batch: prompts decoded at once; decoder: "fast" (low-rank decoder, fp32 `Sam` only),
    "model" (`model.decode`, any model), "auto" (fast when the model allows it).
    """

    mode: str = "hierarchical"
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    high_score_thresh: float = 8.5
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    points_per_batch: int = 16
    decoder: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        minimum = 4 if self.mode == "hierarchical" else 1
        if not isinstance(self.points_per_side, (int, np.integer)) or self.points_per_side < minimum:
            raise ValueError(f"points_per_side must be an integer >= {minimum} in {self.mode} mode, "
                             f"got {self.points_per_side!r}")
        if not isinstance(self.points_per_batch, (int, np.integer)) or self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be an integer >= 1, got {self.points_per_batch!r}")
        if not isinstance(self.min_mask_region_area, (int, np.integer)) or self.min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be an integer >= 0, got {self.min_mask_region_area!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset", "high_score_thresh",
                     "box_nms_thresh"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError(f"box_nms_thresh must be in [0, 1], got {self.box_nms_thresh}")


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


@dataclass(frozen=True)
class _Geometry:
    image_size: int  # model input side (1024)
    input_size: tuple[int, int]  # resized (h, w)
    original_size: tuple[int, int]  # (H, W)


class _Run:
    """One segment-everything run on one image embedding."""

    def __init__(self, decoder: PointDecoder, geometry: _Geometry, params: EverythingParams,
                 progress: ProgressFn | None) -> None:
        self.decoder = decoder
        self.geometry = geometry
        self.params = params
        self.progress = progress
        self.done = 0
        self.total = 0
        self.timings = {"decode_s": 0.0, "filter_s": 0.0}  # summed over worker threads
        self.workers = min(MAX_BATCH_WORKERS, torch.get_num_threads()) if splits_into_threads(decoder) else 1

    # ------------------------------------------------------------------ rounds
    def masks_for_points(self, grid: np.ndarray, need_high: bool) -> tuple[MaskCandidates, np.ndarray | None]:
        """Decode normalised points in batches, filter their masks; with `need_high` also the high map.

        With the low-rank decoder and several intra-op threads, batches run side by side in worker threads with one
        intra-op thread each (its many small ops parallelise poorly inside one op); results keep batch order.
        """
        h, w = self.geometry.original_size
        points = grid * np.array([w, h])[None, :]
        high = np.zeros((w, h), dtype=bool) if need_high else None  # transposed, as the masks below
        self.total += len(points)
        batch = self.params.points_per_batch
        batches = [points[start:start + batch] for start in range(0, len(points), batch)]
        lock = threading.Lock()
        workers = min(self.workers, len(batches))
        threads_each = max(1, torch.get_num_threads() // workers)

        def one_batch(pts: np.ndarray) -> tuple[MaskCandidates, float, float]:
            if workers > 1:
                torch.set_num_threads(threads_each)  # this worker thread's intra-op threads only
            with torch.inference_mode():
                t0 = time.perf_counter()
                decoded = self.decoder(self.to_input_frame(pts))
                t1 = time.perf_counter()
                return self.filter_masks(decoded, pts, high, lock), t1 - t0, time.perf_counter() - t1

        parts = []
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            results = pool.map(one_batch, batches) if pool is not None else map(one_batch, batches)
            for pts, (cands, decode_s, filter_s) in zip(batches, results):
                parts.append(cands)
                self.timings["decode_s"] += decode_s
                self.timings["filter_s"] += filter_s
                self.done += len(pts)
                if self.progress is not None:
                    self.progress(self.done, self.total)  # may raise to cancel: queued batches are dropped
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return MaskCandidates.concat(parts), (None if high is None else high.T)

    def to_input_frame(self, points: np.ndarray) -> np.ndarray:
        """(B, 2) XY original pixels → float64 XY in the model's input frame."""
        (h, w), (ih, iw) = self.geometry.original_size, self.geometry.input_size
        out = np.array(points, dtype=np.float64, copy=True)
        out[:, 0] *= iw / w
        out[:, 1] *= ih / h
        return out

    # ---------------------------------------------------------------- filtering
    def upscale_transposed(self, low_res: torch.Tensor) -> np.ndarray:
        """(K, 256, 256) logits → (K, W, H) float32 logits in original pixels, transposed.

        Bilinear to the input frame, crop to the resized image, bilinear to the original size — done on
        the transposed logits so that the result is already in the column-major layout COCO RLE wants.
        """
        g = self.geometry
        x = low_res.transpose(-1, -2).unsqueeze(1).float()
        x = F.interpolate(x, (g.image_size, g.image_size), mode="bilinear", align_corners=False)
        x = x[..., : g.input_size[1], : g.input_size[0]]
        if tuple(g.input_size) != tuple(g.original_size):
            x = F.interpolate(x, (g.original_size[1], g.original_size[0]), mode="bilinear", align_corners=False)
        return x[:, 0].contiguous().cpu().numpy()

    def filter_masks(self, decoded, points: np.ndarray, high: np.ndarray | None,
                     lock: threading.Lock) -> MaskCandidates:
        p = self.params
        iou = decoded.iou.reshape(-1)
        flat = np.arange(iou.shape[0])
        if p.pred_iou_thresh > 0.0:
            flat = flat[iou > np.float32(p.pred_iou_thresh)]
        if flat.size == 0:
            return MaskCandidates.empty()
        h, w = self.geometry.original_size
        chunk = max(1, _UPSCALE_PIXEL_BUDGET // (h * w))
        parts = []
        for start in range(0, flat.size, chunk):
            idx = flat[start:start + chunk]
            logits_t = self.upscale_transposed(decoded.low_res(idx))  # (k, W, H)
            upper = np.count_nonzero(logits_t > MASK_THRESHOLD + p.stability_score_offset, axis=(1, 2))
            lower = np.count_nonzero(logits_t > MASK_THRESHOLD - p.stability_score_offset, axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                stability = upper.astype(np.float32) / lower.astype(np.float32)
            if p.stability_score_thresh > 0.0:
                ok = stability >= np.float32(p.stability_score_thresh)
                idx, logits_t, stability = idx[ok], logits_t[ok], stability[ok]
                if idx.size == 0:
                    continue
            if high is not None:
                confident = (logits_t > p.high_score_thresh).any(axis=0)
                with lock:
                    np.logical_or(high, confident, out=high)
            masks_t = logits_t > MASK_THRESHOLD  # (k, W, H)
            del logits_t
            # In the transposed frame axis 1 is x and axis 2 is y.
            boxes = rows_cols_to_boxes(masks_t.any(axis=1), masks_t.any(axis=2))
            parts.append(MaskCandidates(
                points=points[idx // 3],
                predicted_iou=iou[idx].astype(np.float32),
                stability_score=stability.astype(np.float32),
                boxes=boxes,
                areas=np.count_nonzero(masks_t, axis=(1, 2)).astype(np.int64),
                rles=encode_rle_transposed(masks_t),
            ))
        return MaskCandidates.concat(parts)

    # ----------------------------------------------------------------- records
    def records(self, cands: MaskCandidates) -> list[dict]:
        p = self.params
        keep = box_nms(cands.boxes.astype(np.float64), cands.predicted_iou, p.box_nms_thresh)
        cands = cands.take(keep)
        if p.min_mask_region_area > 0 and len(cands):
            cands = remove_small_regions_and_duplicates(cands, p.min_mask_region_area,
                                                        max(p.box_nms_thresh, _CROP_NMS_THRESH))
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


def _geometry_of(emb, image_size: int) -> _Geometry:
    return _Geometry(int(image_size), tuple(int(v) for v in emb.input_size), tuple(int(v) for v in emb.original_size))


def run_everything(predictor, image, params: EverythingParams, progress: ProgressFn | None = None
                   ) -> EverythingResult:
    """Segment everything in `image` (anything `Predictor.embed` takes, or an `ImageEmbedding`)."""
    from ..predictor import ImageEmbedding

    t_start = time.perf_counter()
    emb = image if isinstance(image, ImageEmbedding) else predictor.embed(image)
    t_embed = time.perf_counter()
    model = predictor.model
    geometry = _geometry_of(emb, model.image_size)
    with torch.inference_mode():
        decoder = make_point_decoder(model, emb.features, params.decoder, context=emb.context)
        run = _Run(decoder, geometry, params, progress)
        if params.mode == "dense":
            cands, _ = run.masks_for_points(cell_centre_grid(params.points_per_side), need_high=False)
            per_round = [run.done]
        else:
            first_grid = cell_centre_grid(params.points_per_side // 4)
            first, high = run.masks_for_points(first_grid, need_high=True)
            second_grid = second_round_points(first_grid, geometry.original_size, params.points_per_side, high)
            logger.info("hierarchical: %d first-round prompts kept %d masks; %d second-round prompts",
                        len(first_grid), len(first), len(second_grid))
            if len(second_grid):
                second, _ = run.masks_for_points(second_grid, need_high=False)
                cands = MaskCandidates.concat([second, first])
            else:
                cands = first
            per_round = [len(first_grid), len(second_grid)]
        t_nms = time.perf_counter()
        records = run.records(cands)
    t_end = time.perf_counter()
    timings = dict(run.timings, embed_s=t_embed - t_start, records_s=t_end - t_nms, total_s=t_end - t_start,
                   decoder=decoder.name)
    logger.info("everything (%s): %d prompts, %d masks before NMS, %d records in %.2f s", params.mode,
                sum(per_round), len(cands), len(records), t_end - t_start)
    return EverythingResult(records, per_round, len(cands), timings)


def segment_everything(predictor, image, *, mode: str = "hierarchical", points_per_side: int = 32,
                       pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                       high_score_thresh: float = 8.5, box_nms_thresh: float = 0.7, min_mask_region_area: int = 0,
                       points_per_batch: int = 16, stability_score_offset: float = 1.0, decoder: str = "auto",
                       progress: ProgressFn | None = None) -> list[dict]:
    """Masks of everything in an image, one record per mask.

    predictor: a `Predictor`; image: anything `Predictor.embed` accepts, or an `ImageEmbedding` already
    computed (not encoded again). mode: "hierarchical" (TinySAM) or "dense" (SAM's grid). progress: called as
    progress(prompts_done, prompts_planned) after every batch (the plan grows when the second round is known).

    Returns records sorted by predicted IoU (highest first): `segmentation` COCO RLE {"size": [H, W],
    "counts": str}, `bbox` [x, y, w, h], `area` (pixels), `predicted_iou`, `stability_score`, `point_coords`
    [[x, y]] (original pixels).
    """
    params = EverythingParams(mode=mode, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                              stability_score_thresh=stability_score_thresh,
                              stability_score_offset=stability_score_offset, high_score_thresh=high_score_thresh,
                              box_nms_thresh=box_nms_thresh, min_mask_region_area=min_mask_region_area,
                              points_per_batch=points_per_batch, decoder=decoder)
    return run_everything(predictor, image, params, progress).records
