"""What the FiftyOne adapter adds to segment-everything: time, minor page faults and resident memory per image.

Three ways over the same N images, interleaved image by image in one process (same model, same allocator state):

- `segment_everything`: the core, called on each image (the reference);
- `auto_mask`, masks in the documents (FiftyOne dataset, labels written per sample);
- `auto_mask`, masks as PNGs on disk (`output_dir`).

Per way: median wall and CPU seconds per image, the median over images of each against the core's on the same
image, minor page faults per image (getrusage), and RSS with its growth after the warm-up (a leak shows as
steady growth). Datasets are uniquely named in FiftyOne's configured database and deleted afterwards. The
allocator state is printed: `--tuned-env` re-executes the script with TinySAM's malloc variables (what `tinysam`
commands and `tinysam fo-workers` do); without it the process has what `tune_in_process` sets at run time (as
the adapter does in FiftyOne's own processes).

    python benchmarks/fiftyone_rss.py --images 6 --size 512 --points-per-side 16 --checkpoint ../shared/parity/tinysam_random_weights.pth
    python benchmarks/fiftyone_rss.py --images 6 --size 512 --points-per-side 16 --checkpoint ... --tuned-env
    python benchmarks/fiftyone_rss.py --images 200            # tiny random model: RSS growth over many images
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

MiB = 1 << 20


def make_images(out: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """n distinct RGB crops of scikit-image's bundled photos, sides between 3/4 size and size, as PNGs."""
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


class Meter:
    """Per-image wall time, minor faults and RSS, sampled by `tick()` after each image."""

    def __init__(self, label: str) -> None:
        import psutil

        self.label, self.proc = label, psutil.Process()
        self.times, self.cpu, self.faults, self.rss = [], [], [], []
        gc.collect()
        self.rss0 = self.proc.memory_info().rss
        self.start()

    @staticmethod
    def _now() -> tuple[float, float, int]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), r.ru_utime + r.ru_stime, r.ru_minflt

    def start(self) -> None:
        self._t, self._c, self._f = self._now()

    def tick(self) -> None:
        t, c, f = self._now()
        self.times.append(t - self._t)
        self.cpu.append(c - self._c)
        self.faults.append(f - self._f)
        self.rss.append(self.proc.memory_info().rss)
        self._t, self._c, self._f = t, c, f


def run_interleaved(fo, paths, predictor, params, mask_dir) -> tuple[list[Meter], list[dict]]:
    """Image by image: the core, then auto_mask into the documents, then onto disk (the adapter called on a
    one-sample view, so its per-call work is counted too), then the core again. Side by side per image, so a
    machine whose load changes during the run affects the three alike."""
    from tinysam_backend import load_image, segment_everything
    from tinysam_backend.fiftyone_adapter import auto_mask

    # persistent and uniquely named: another process attached to the same database service cannot clean it up
    ds = fo.Dataset(f"tinysam-rss-{uuid.uuid4().hex[:10]}", persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ids = ds.values("id")
    meters = [Meter("segment_everything"), Meter("auto_mask, masks in documents"),
              Meter("auto_mask, masks on disk")]
    summaries = [{"masks": 0}, {"masks": 0}]
    try:
        for sample_id, path in zip(ids, paths):
            for k, meter in enumerate(meters):
                meter.start()
                if k == 0:
                    segment_everything(predictor, load_image(path), **params)
                else:
                    out = auto_mask(ds.select(sample_id), f"auto{k}", predictor=predictor, progress=False,
                                    output_dir=mask_dir if k == 2 else None, **params)
                    summaries[k - 1]["masks"] += out["masks"]
                meter.tick()
        for k, summary in enumerate(summaries):
            summary["doc_bytes"] = ds.select_fields(f"auto{k + 1}").stats()["samples_bytes"]
    finally:
        ds.delete()
    return meters, summaries


def allocator_state() -> str:
    from tinysam_backend.allocator import is_tuned, tuning_enabled

    if is_tuned():
        return "TinySAM malloc variables in the environment (mmap threshold 4 GiB, no trim)"
    if tuning_enabled():
        return "run-time mallopt (tune_in_process: mmap off, no trim), as the adapter sets in FiftyOne's processes"
    return "glibc defaults (TINYSAM_MALLOC_TUNING=0)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=96, help="longest side of the images (pixels)")
    parser.add_argument("--checkpoint", help="real checkpoint (default: tiny random test model)")
    parser.add_argument("--points-per-side", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="images before RSS growth is measured")
    parser.add_argument("--tuned-env", action="store_true", help="re-execute with TinySAM's malloc variables")
    args = parser.parse_args()
    if args.tuned_env:
        from tinysam_backend.allocator import reexec_with_tuned_allocator

        reexec_with_tuned_allocator()

    import fiftyone as fo

    from tinysam_backend.allocator import tune_in_process

    sys.path.insert(0, str(Path(__file__).parent))
    from fiftyone_shards import cpu_flags

    tune_in_process()  # what the adapter does when it loads a model itself
    work = Path(tempfile.mkdtemp(prefix="tinysam-rss-"))
    fo.config.database_validation = False
    fo.config.do_not_track = True
    (work / "images").mkdir()
    paths = make_images(work / "images", args.images, args.size)
    predictor = build_predictor(args.checkpoint)
    # Permissive thresholds: random weights give low predicted IoUs; every image must yield masks.
    params = {"points_per_side": args.points_per_side, "pred_iou_thresh": -1.0, "stability_score_thresh": 0.0,
              "high_score_thresh": 0.0, "box_nms_thresh": 1.0}
    try:
        run_interleaved(fo, paths[:1], predictor, params, work / "warm")  # first-call costs out of every column
        (core, docs, disk), (docs_summary, disk_summary) = run_interleaved(fo, paths, predictor, params,
                                                                           work / "masks")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.images
    print(f"CPU: {cpu_flags()}")
    print(f"allocator: {allocator_state()}")
    print(f"{n} images (≤{args.size}px), model {args.checkpoint or 'tiny_test_t (random)'}, "
          f"points_per_side {args.points_per_side}, hierarchical")
    print(f"{'':34s} {'wall s':>7s} {'vs core':>8s} {'CPU s':>7s} {'vs core':>8s} {'faults/img':>11s} "
          f"{'RSS MiB':>8s} {'growth MiB':>11s}")
    for m in (core, docs, disk):
        growth = (m.rss[-1] - m.rss[min(args.warmup, n) - 1]) / MiB
        # per image against the core on the same image, median over images; CPU time (user + system, all
        # threads) is the steadier figure on a machine shared with other work
        wall = statistics.median(t / c for t, c in zip(m.times, core.times)) - 1
        cpu = statistics.median(t / c for t, c in zip(m.cpu, core.cpu)) - 1
        print(f"{m.label:34s} {statistics.median(m.times):7.3f} {wall:+8.1%} {statistics.median(m.cpu):7.3f} "
              f"{cpu:+8.1%} {statistics.median(m.faults):11.0f} {m.rss[-1] / MiB:8.1f} {growth:+11.1f}")
    print(f"masks: {docs_summary['masks']} (documents {docs_summary['doc_bytes'] / MiB:.2f} MiB), "
          f"{disk_summary['masks']} on disk (documents {disk_summary['doc_bytes'] / MiB:.2f} MiB)")


if __name__ == "__main__":
    main()
