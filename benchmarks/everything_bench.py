"""Segment-everything speed on one 1024-px image: dense vs hierarchical, straightforward vs optimised decoding.

    python benchmarks/everything_bench.py [--checkpoint PATH] [--image PATH] [--thresholds paper,permissive]
                                          [--threads N]

"model" decodes each batch of points with `model.decode` (every mask of every prompt through the full
decoder, the straightforward way); "fast" is `LowRankDecoder` (image side once, in `Predictor.embed`;
low-rank per-prompt work, mask heads only for masks that pass the IoU filter; batches side by side in worker
threads with one intra-op thread each). Both share the same filtering and NMS, and the
benchmark checks they return the same masks. Times are wall seconds of `run_everything` on an embedding
computed once (the encoder is timed separately), in one process, the variants run in turns.

Default thresholds are the paper's (pred_iou 0.88, stability 0.95, high 8.5). With the parity checkpoint
(random weights) no mask passes them, so only decoding is timed and the hierarchical second round queries
every candidate (the worst case for it). `--thresholds permissive` runs with the parity fixtures' thresholds,
where most masks pass and upscaling, stability, RLE and the mask heads are timed as well.
The arithmetic, hence the time, does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "tinysam_random_weights.pth"
PERMISSIVE = {"pred_iou_thresh": 0.0635, "stability_score_thresh": 0.0, "high_score_thresh": 0.124}


def test_image(path: str | None) -> np.ndarray:
    """The given image, or scikit-image's astronaut upscaled to 1024 × 1024."""
    from PIL import Image

    from tinysam_backend import load_image

    if path:
        return load_image(path)
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()[..., :3]).resize((1024, 1024), Image.BILINEAR))


def same_records(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    return all(x["point_coords"] == y["point_coords"] and abs(x["predicted_iou"] - y["predicted_iou"]) < 1e-3
               and abs(x["area"] - y["area"]) <= 0.005 * max(1, y["area"]) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--image", help="an image file (default: astronaut resized to 1024 × 1024)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=None, help="default: EverythingParams'")
    parser.add_argument("--thresholds", default="paper",
                        help="comma-separated: paper (0.88 / 0.95 / 8.5), permissive (the parity fixtures')")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.everything import EverythingParams, run_everything

    model = load_model(args.checkpoint)
    predictor = Predictor(model)
    image = test_image(args.image)
    t = time.perf_counter()
    emb = predictor.embed(image)
    embed_s = time.perf_counter() - t
    from tinysam_backend.modeling.lowrank_decoder import ImageContext

    t = time.perf_counter()
    ImageContext(model, emb.features)
    context_s = time.perf_counter() - t
    print(f"image {image.shape[1]}x{image.shape[0]}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} at start; embed {embed_s:.2f} s, of which the low-rank decoder's "
          f"image context {context_s:.2f} s (neither in the times below)")

    known = {"paper": ("paper thresholds", {}), "permissive": ("permissive thresholds", PERMISSIVE)}
    names = [n.strip() for n in args.thresholds.split(",") if n.strip()]
    if not names or any(n not in known for n in names):
        parser.error(f"--thresholds takes a comma-separated subset of {sorted(known)}, got {args.thresholds!r}")
    settings = [known[n] for n in names]
    batch = {} if args.points_per_batch is None else {"points_per_batch": args.points_per_batch}
    header = f"{'thresholds':22s} {'mode':13s} {'decoder':8s} {'prompts':>7s} {'masks':>6s} {'wall s':>8s} " \
             f"{'ms/prompt':>9s} {'decode s':>8s} {'filter s':>8s}"
    print(header)
    for label, thresholds in settings:
        for mode in ("dense", "hierarchical"):
            results = {}
            for decoder in ("model", "fast"):
                params = EverythingParams(mode=mode, points_per_side=args.points_per_side, decoder=decoder,
                                          **thresholds, **batch)
                t = time.perf_counter()
                res = run_everything(predictor, emb, params)
                wall = time.perf_counter() - t
                results[decoder] = (res, wall)
                print(f"{label:22s} {mode:13s} {decoder:8s} {res.num_prompts:7d} {len(res.records):6d} {wall:8.2f} "
                      f"{1000 * wall / max(1, res.num_prompts):9.1f} {res.timings['decode_s']:8.2f} "
                      f"{res.timings['filter_s']:8.2f}")
            (slow, t_slow), (fast, t_fast) = results["model"], results["fast"]
            print(f"{'':22s} {mode:13s} speed-up fast/model: {t_slow / t_fast:.1f}x; "
                  f"same masks: {same_records(fast.records, slow.records)}")


if __name__ == "__main__":
    from tinysam_backend.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()  # the malloc settings `tinysam` commands run with
    main()
