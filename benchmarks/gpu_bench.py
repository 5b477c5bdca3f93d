"""The torch engine on a CUDA GPU: encoder (fp32 / fp16 / bf16 autocast), a click, segment-everything.

    python benchmarks/gpu_bench.py [--checkpoint CKPT] [--device cuda:0] [--runs 10]

Without CUDA it says so and exits 0 (nothing to measure). Times are medians after warm-up, with
`torch.cuda.synchronize` around each run; accuracy of fp16 / bf16 is the best-mask IoU against fp32 on the GPU over
the parity prompts (target mean >= 0.97, worst >= 0.90).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_env import mask_iou  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "parity"
CASES = ("point", "points_pos_neg", "box", "box_point", "refine_with_mask_input")


def _timed(fn, runs: int, device: torch.device) -> float:
    fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(PARITY / "tinysam_random_weights.pth"))
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to measure (run this on a GPU host)")
        return 0
    import skimage.data

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.everything import EverythingParams
    from tinysam_backend.everything.generator import run_everything
    from tinysam_backend.image_io import array_to_rgb

    device = torch.device(args.device)
    print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    manifest = json.loads((PARITY / "manifest.json").read_text())
    images = {n: array_to_rgb(getattr(skimage.data, n)()) for n in manifest["images"]}
    predictors = {prec: Predictor(load_model(args.checkpoint, device=args.device, engine="torch", precision=prec))
                  for prec in ("fp32", "fp16", "bf16")}
    x = torch.randn(1, 3, 1024, 1024, device=device)
    ref = predictors["fp32"]
    print("| image encoder on GPU | ms | vs fp32 | best-mask IoU vs fp32 (mean / worst) |\n|---|---|---|---|")
    base = None
    for prec, pred in predictors.items():
        with torch.inference_mode():
            t = _timed(lambda pred=pred: pred.model.encode_image(x), args.runs, device)
        base = base or t
        ious = []
        if prec != "fp32":
            for name, rgb in images.items():
                e1, e2 = ref.embed(rgb), pred.embed(rgb)
                for case in CASES:
                    z = np.load(PARITY / f"{name}_{case}.npz")
                    kw = {"point_coords": z.get("prompt_point_coords"), "point_labels": z.get("prompt_point_labels"),
                          "box": z.get("prompt_box"), "mask_input": z.get("prompt_mask_input")}
                    m1, s1, _ = ref.predict(e1, **kw)
                    m2, _, _ = pred.predict(e2, **kw)
                    ious.append(mask_iou(m1[int(np.argmax(s1))], m2[int(np.argmax(s1))]))
        acc = "(reference)" if not ious else f"{np.mean(ious):.4f} / {np.min(ious):.4f}"
        print(f"| torch {prec} | {t * 1e3:.1f} | {base / t:.2f}x | {acc} |")
    pred = predictors["fp16"]
    emb = pred.embed(images["astronaut"])
    pt, lab = np.array([[[200.0, 150.0]]]), np.array([[1]])
    click = _timed(lambda: pred.predict_batch(emb, pt, lab, best_only=True), args.runs * 5, device)
    print(f"click with a cached embedding (fp16 encoder, fp32 low-rank decoder on GPU): {click * 1e3:.1f} ms")
    params = EverythingParams(mode="hierarchical", points_per_side=32)
    for prec in ("fp32", "fp16"):
        t = _timed(lambda prec=prec: run_everything(predictors[prec], images["astronaut"], params), 3, device)
        print(f"segment-everything hierarchical, 32 points/side, embedding included ({prec} encoder): {t:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
