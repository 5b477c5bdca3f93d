"""Memory while `auto_mask` runs over a FiftyOne dataset: resident set size (RSS) per sample, growth printed.

Masks kept in the documents and masks written to disk (`output_dir`) are measured side by side in one run,
each on its own dataset of N distinct small images (crops of scikit-image's bundled photos), in FiftyOne's
configured database (uniquely named datasets, deleted afterwards). The model defaults to the tiny random test variant (fast; the adapter's memory is what
is measured); `--checkpoint` runs a real one.

    python benchmarks/fiftyone_rss.py --images 200
    python benchmarks/fiftyone_rss.py --images 200 --checkpoint ../shared/parity/tinysam_random_weights.pth
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

MiB = 1 << 20


def make_images(out: Path, n: int, size: int, seed: int = 0) -> list[str]:
    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        h = int(rng.integers(size * 3 // 4, size + 1))
        w = int(rng.integers(size * 3 // 4, size + 1))
        scale = rng.uniform(0.15, 0.4)
        small = np.asarray(Image.fromarray(src).resize((max(w, int(src.shape[1] * scale)),
                                                        max(h, int(src.shape[0] * scale)))))
        y = int(rng.integers(0, small.shape[0] - h + 1))
        x = int(rng.integers(0, small.shape[1] - w + 1))
        path = out / f"img_{i:04d}.png"
        Image.fromarray(np.ascontiguousarray(small[y:y + h, x:x + w])).save(path)
        paths.append(str(path))
    return paths


def build_predictor(checkpoint: str | None):
    from tinysam_backend import Predictor, load_model

    if checkpoint:
        return Predictor(load_model(checkpoint))
    import torch

    from tinysam_backend.modeling import build_sam

    torch.manual_seed(0)
    return Predictor(build_sam("tiny_test_t").eval())


def measure(fo, paths, predictor, label: str, output_dir, params, marks) -> dict:
    import psutil

    from tinysam_backend.fiftyone_adapter import auto_mask

    proc = psutil.Process()
    # persistent and uniquely named: another process attached to the same database service cannot clean it up
    ds = fo.Dataset(f"tinysam-rss-{uuid.uuid4().hex[:10]}", persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    gc.collect()
    rss = {0: proc.memory_info().rss}

    def progress(done, total):
        if done in marks or done == total:
            rss[done] = proc.memory_info().rss

    try:
        t0 = time.perf_counter()
        summary = auto_mask(ds, "auto", predictor=predictor, output_dir=output_dir, progress=progress, **params)
        seconds = time.perf_counter() - t0
        doc_bytes = ds.stats()["samples_bytes"]
    finally:
        ds.delete()
    return {"label": label, "rss": rss, "masks": summary["masks"], "seconds": seconds, "doc_bytes": doc_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=96, help="longest side of the images (pixels)")
    parser.add_argument("--checkpoint", help="real checkpoint (default: tiny random test model)")
    parser.add_argument("--points-per-side", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20, help="growth is measured from this sample on")
    args = parser.parse_args()

    import fiftyone as fo

    work = Path(tempfile.mkdtemp(prefix="tinysam-rss-"))
    fo.config.database_validation = False
    fo.config.do_not_track = True
    (work / "images").mkdir()
    paths = make_images(work / "images", args.images, args.size)
    predictor = build_predictor(args.checkpoint)
    # Permissive thresholds: random weights give low predicted IoUs; every image must yield masks.
    params = {"points_per_side": args.points_per_side, "pred_iou_thresh": -1.0, "stability_score_thresh": 0.0,
                  "high_score_thresh": 0.0, "box_nms_thresh": 1.0, "points_per_batch": 64}
    n = args.images
    marks = sorted({1, args.warmup, n // 4, n // 2, 3 * n // 4, n} - {0})
    try:
        runs = [measure(fo, paths, predictor, "masks in documents", None, params, marks),
                measure(fo, paths, predictor, "masks on disk", work / "masks", params, marks)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    model = args.checkpoint or "tiny_test_t (random)"
    print(f"auto_mask over {n} images (≤{args.size}px), model {model}, points_per_side {args.points_per_side}")
    print(f"{'samples done':>12s} " + " ".join(f"{r['label'] + ' RSS MiB':>26s}" for r in runs))
    for mark in [0] + marks:
        print(f"{mark:12d} " + " ".join(f"{r['rss'][mark] / MiB:26.1f}" for r in runs))
    for r in runs:
        growth = (r["rss"][n] - r["rss"][args.warmup]) / MiB
        per_100 = growth / max(n - args.warmup, 1) * 100
        print(f"{r['label']}: {r['masks']} masks, {r['seconds']:.1f} s, documents {r['doc_bytes'] / MiB:.2f} MiB; "
              f"RSS growth samples {args.warmup}→{n}: {growth:+.1f} MiB ({per_100:+.2f} MiB per 100 images)")
    doc, disk = runs
    if disk["doc_bytes"]:
        print(f"document size ratio (in documents / on disk): {doc['doc_bytes'] / disk['doc_bytes']:.1f}x")


if __name__ == "__main__":
    main()
