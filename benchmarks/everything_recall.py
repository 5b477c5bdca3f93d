"""Does hierarchical everything find what dense everything finds, with fewer prompts?

    python benchmarks/everything_recall.py [--checkpoint PATH] [--iou 0.5] [--thresholds parity|paper]

For each parity image (scikit-image's astronaut and coffee, as in ../shared/parity), runs dense and
hierarchical segment-everything with the same thresholds and reports: prompts queried by each, masks found,
and the recall of the dense masks by the hierarchical ones (a dense mask is recalled when some
hierarchical mask has mask IoU >= --iou with it).

With the parity checkpoint (random weights) only the fixtures' thresholds (`--thresholds parity`, the
default here) keep masks; the paper's thresholds are for the real TinySAM weights (`--checkpoint`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "tinysam_random_weights.pth"
THRESHOLDS = {
    "parity": {"pred_iou_thresh": 0.0635, "stability_score_thresh": 0.0, "high_score_thresh": 0.124},
    "paper": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "high_score_thresh": 8.5},
}


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, H, W) and (M, H, W) bool → (K, M) mask IoU."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def recall(dense: list[dict], hierarchical: list[dict], iou: float) -> float:
    from tinysam_backend.masks import decode_rle

    if not dense:
        return float("nan")
    if not hierarchical:
        return 0.0
    a = np.stack([decode_rle(r["segmentation"]) for r in dense])
    b = np.stack([decode_rle(r["segmentation"]) for r in hierarchical])
    return float((mask_iou_matrix(a, b).max(axis=1) >= iou).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--thresholds", choices=sorted(THRESHOLDS), default="parity")
    args = parser.parse_args()

    import skimage.data

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.everything import EverythingParams, run_everything
    from tinysam_backend.image_io import array_to_rgb

    predictor = Predictor(load_model(args.checkpoint))
    print(f"thresholds {args.thresholds} {THRESHOLDS[args.thresholds]}, points_per_side {args.points_per_side}, "
          f"recall at mask IoU >= {args.iou}")
    print(f"{'image':10s} {'dense prompts':>13s} {'hier prompts':>12s} {'dense masks':>11s} {'hier masks':>10s} "
          f"{'recall':>7s} {'dense s':>8s} {'hier s':>7s}")
    totals = []
    for name in ("astronaut", "coffee"):
        emb = predictor.embed(array_to_rgb(getattr(skimage.data, name)()))
        out = {}
        for mode in ("dense", "hierarchical"):
            params = EverythingParams(mode=mode, points_per_side=args.points_per_side, **THRESHOLDS[args.thresholds])
            out[mode] = run_everything(predictor, emb, params)
        d, h = out["dense"], out["hierarchical"]
        r = recall(d.records, h.records, args.iou)
        totals.append((d.num_prompts, h.num_prompts, len(d.records), r))
        print(f"{name:10s} {d.num_prompts:13d} {h.num_prompts:12d} {len(d.records):11d} {len(h.records):10d} "
              f"{r:7.3f} {d.timings['total_s']:8.1f} {h.timings['total_s']:7.1f}")
    dp, hp = sum(t[0] for t in totals), sum(t[1] for t in totals)
    masks = sum(t[2] for t in totals)
    weighted = sum(t[2] * t[3] for t in totals if t[2]) / masks if masks else float("nan")
    print(f"all: hierarchical queried {hp} prompts vs dense {dp} ({hp / dp:.0%}); recall of {masks} dense masks "
          f"{weighted:.3f}")


if __name__ == "__main__":
    from tinysam_backend.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()  # the malloc settings `tinysam` commands run with
    main()
