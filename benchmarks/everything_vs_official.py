"""Segment-everything end to end, ours against the official TinySAM implementation, in one process, same weights.

    python benchmarks/everything_vs_official.py --official DIR [--checkpoint PATH] [--image PATH]
        [--points-per-side 32] [--thresholds paper,permissive] [--engine auto,torch] [--repeats 3] [--profile]

Why: the speed target of everything-mode is a ratio to the official code (hierarchical, its defaults, 32 points per
side, one 1024-px image, the image embedding included). A ratio is only worth something when both sides run on
the same machine, under the same load, on the same weights and image; so this runs them in turns (official, ours,
official, ours, ...) and prints the medians, their ratio, the CPU flags and the load average.

DIR is a checkout of github.com/xinghaochen/TinySAM. Its code is imported from there at run time; none of it is
in this repository. Both sides load the same state dict (official layout; default: the parity fixtures' random
weights): the official `sam_model_registry["vit_t"](checkpoint=...)`, ours `tinysam_backend.load_model`, once per
`--engine` (auto: what this host picks, printed with `engine_info`; torch: fp32 PyTorch, like for like).

Each side is timed from the RGB array to the records: the official `SamHierarchicalMaskGenerator(model,
**thresholds).hierarchical_generate(image)` with every other argument at its default (64 points per batch,
binary-mask output), ours `run_everything(predictor, image, EverythingParams(**thresholds))` (16 points per
batch, COCO RLE output). A first untimed round warms both up; then `--repeats` rounds in turns, as
`bench_env.interleaved` does, each round printed with the load average (other processes share the CPU).

Thresholds: "paper" is both defaults (pred IoU 0.88, stability 0.95, high 8.5). With random weights no mask
passes them: both sides then decode every prompt of both rounds and keep nothing. "permissive" is the thresholds
of `everything_bench.PERMISSIVE`, with which about half of the masks pass, so upscaling, stability, RLE and NMS are
timed too (NMS then keeps few: masks of random weights are large and overlap).
Agreement: for each official mask the best mask IoU among ours (mean / min / share ≥ 0.99), and the reverse;
prompts per round and masks before NMS show whether both did the same work.

Stand-ins: the official code imports torchvision (`ops.boxes.batched_nms`, `box_area`;
`transforms.functional.resize`, `to_pil_image`) and timm (`DropPath`, `to_2tuple`, `trunc_normal_`,
`register_model`). Where a package is not installed (torchvision's wheel would bring a second, CUDA, torch),
small modules written here take their place in `sys.modules` while the official package is imported, and are
removed afterwards: a pure-torch greedy NMS, Pillow's bilinear resize (what torchvision does to a PIL image), an
identity DropPath (eval mode, drop rate 0). The output says which were used, and every NMS call the official code
makes through the stand-in is compared with ours (`everything.postprocess.box_nms`) on the same boxes, plus one
call on random boxes.

`--profile` runs ours once more per setting under cProfile (every thread: the decoder works in a thread pool) and
prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import torch

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "tinysam_random_weights.pth"


# --------------------------------------------------------------------------------------------- stand-ins
class NmsRecorder:
    """A pure-torch `batched_nms` that keeps every call (boxes, scores, threshold, kept) for the comparison."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]] = []

    @staticmethod
    def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        """Greedy NMS, highest score first (ties: lower index first); IoU with area (x1 - x0)(y1 - y0), a box is
        dropped when its IoU with a kept box is > iou_threshold. Returns kept indices (int64)."""
        k = boxes.shape[0]
        if k == 0:
            return torch.zeros(0, dtype=torch.int64)
        order = torch.sort(scores, descending=True, stable=True).indices
        b = boxes[order]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        lt = torch.maximum(b[:, None, :2], b[None, :, :2])
        rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        over = (inter / (area[:, None] + area[None, :] - inter) > iou_threshold).numpy()
        removed = np.zeros(k, dtype=bool)
        keep = []
        for i in range(k):
            if not removed[i]:
                keep.append(i)
                removed |= over[i]
        return order[torch.as_tensor(keep, dtype=torch.int64)]

    def batched_nms(self, boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                    iou_threshold: float) -> torch.Tensor:
        """NMS within each category of `idxs`: boxes of different categories are shifted apart so they never
        overlap, then one NMS."""
        if boxes.numel() == 0:
            kept = torch.zeros(0, dtype=torch.int64)
        else:
            shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
            kept = self.nms(shifted, scores, iou_threshold)
        self.calls.append((boxes.clone(), scores.clone(), float(iou_threshold), kept))
        return kept


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _stand_in_modules(recorder: NmsRecorder) -> dict[str, dict[str, types.ModuleType]]:
    """package → {module name: stand-in module} for what the official code imports from torchvision and timm."""
    from PIL import Image

    def box_area(boxes: torch.Tensor) -> torch.Tensor:
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def to_pil_image(pic: np.ndarray) -> Image.Image:
        if not (isinstance(pic, np.ndarray) and pic.dtype == np.uint8 and pic.ndim == 3):
            raise TypeError(f"stand-in to_pil_image takes an H×W×C uint8 array, got {type(pic).__name__}")
        return Image.fromarray(pic)

    def resize(img: Image.Image, size) -> Image.Image:
        h, w = (int(v) for v in size)  # torchvision's (h, w); a PIL image is resized bilinearly by Pillow
        return img.resize((w, h), Image.BILINEAR)

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.drop_prob or not self.training:
                return x
            keep = 1.0 - self.drop_prob
            return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep) / keep

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)

    boxes = _module("torchvision.ops.boxes", batched_nms=recorder.batched_nms, box_area=box_area)
    functional = _module("torchvision.transforms.functional", resize=resize, to_pil_image=to_pil_image)
    layers = _module("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
    registry = _module("timm.models.registry", register_model=lambda fn: fn)
    return {
        "torchvision": {"torchvision": _module("torchvision"), "torchvision.ops": _module("torchvision.ops", boxes=boxes),
                        "torchvision.ops.boxes": boxes,
                        "torchvision.transforms": _module("torchvision.transforms", functional=functional),
                        "torchvision.transforms.functional": functional},
        "timm": {"timm": _module("timm"), "timm.models": _module("timm.models", layers=layers, registry=registry),
                 "timm.models.layers": layers, "timm.models.registry": registry},
    }


def import_official(official_dir: Path, recorder: NmsRecorder) -> tuple[types.ModuleType, list[str]]:
    """Import the official `tinysam` package from `official_dir`, with stand-ins for torchvision / timm where they
    are not installed. Returns (package, names of the packages replaced by stand-ins)."""
    import importlib
    import importlib.util

    if not (official_dir / "tinysam" / "hierarchical_mask_generator.py").is_file():
        raise SystemExit(f"--official must be a checkout of github.com/xinghaochen/TinySAM (with "
                         f"tinysam/hierarchical_mask_generator.py), got {official_dir}")
    replaced, added = [], []
    for package, modules in _stand_in_modules(recorder).items():
        if importlib.util.find_spec(package) is None:
            replaced.append(package)
            for name, mod in modules.items():
                sys.modules[name] = mod
                added.append(name)
    sys.path.insert(0, str(official_dir))
    try:
        tinysam = importlib.import_module("tinysam")
    finally:
        sys.path.remove(str(official_dir))
        for name in added:  # the official modules hold what they imported; nothing else sees the stand-ins
            del sys.modules[name]
    return tinysam, replaced


def nms_agreement(recorder: NmsRecorder) -> str:
    """Our `box_nms` against the stand-in on every recorded call and on 3000 random boxes."""
    from tinysam_backend.everything.postprocess import box_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 900, size=(3000, 2))
    random_boxes = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(1, 300, size=(3000, 2))], axis=1)).float()
    random_scores = torch.from_numpy(rng.uniform(0, 1, size=3000)).float()
    calls = [*recorder.calls, (random_boxes, random_scores, 0.7, NmsRecorder.nms(random_boxes, random_scores, 0.7))]
    same = sum(np.array_equal(box_nms(b.double().numpy(), s.numpy(), t), kept.numpy()) for b, s, t, kept in calls)
    sizes = sorted({int(b.shape[0]) for b, *_ in recorder.calls})
    return (f"stand-in NMS vs ours (everything.postprocess.box_nms): same kept indices in {same}/{len(calls)} calls "
            f"({len(recorder.calls)} made by the official code, boxes per call {sizes}; 1 on 3000 random boxes)")


# ------------------------------------------------------------------------------------------------- runs
def test_image(path: str | None) -> np.ndarray:
    """The given image as is, or scikit-image's rocket resized (Pillow bilinear) so its long side is 1024."""
    from PIL import Image

    from tinysam_backend import load_image

    if path:
        return load_image(path)
    import skimage.data

    rgb = skimage.data.rocket()[..., :3]
    scale = 1024 / max(rgb.shape[:2])
    size = (int(rgb.shape[1] * scale + 0.5), int(rgb.shape[0] * scale + 0.5))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def run_official(tinysam, model, image: np.ndarray, points_per_side: int, thresholds: dict,
                 recorder: NmsRecorder) -> tuple[list, float, int, int | None]:
    """(annotations, wall seconds, second-round prompts, masks before NMS where the stand-in NMS saw them)."""
    calls = len(recorder.calls)
    t = time.perf_counter()
    generator = tinysam.SamHierarchicalMaskGenerator(model, points_per_side=points_per_side, **thresholds)
    annotations = generator.hierarchical_generate(image)
    wall = time.perf_counter() - t
    before_nms = int(recorder.calls[calls][0].shape[0]) if len(recorder.calls) > calls else None
    return annotations, wall, len(generator.point_grids[0]), before_nms


def run_ours(predictor, image: np.ndarray, params):
    from tinysam_backend.everything import run_everything

    t = time.perf_counter()
    result = run_everything(predictor, image, params)
    return result, time.perf_counter() - t


def agreement(official: list[dict], ours: list[dict]) -> str:
    """Best mask IoU per official mask among ours (and the reverse)."""
    from tinysam_backend.masks import decode_rle, mask_iou_matrix

    if not official and not ours:
        return "no masks on either side"
    if not official or not ours:
        return f"one side has no masks (official {len(official)}, ours {len(ours)})"
    iou = mask_iou_matrix([decode_rle(r["segmentation"]) for r in ours], [a["segmentation"] for a in official])
    fwd, back = iou.max(axis=0), iou.max(axis=1)
    return (f"best IoU per official mask among ours: mean {fwd.mean():.4f}, min {fwd.min():.4f}, "
            f"≥0.99 for {np.mean(fwd >= 0.99):.1%}; per mask of ours among the official: mean {back.mean():.4f}, "
            f"min {back.min():.4f}")


def profile_ours(predictor, image: np.ndarray, params, top: int) -> None:
    """One run of ours under cProfile in the calling thread and in every thread started meanwhile (merged)."""
    profiles: list[cProfile.Profile] = []

    def start_in_new_thread(*_):
        p = cProfile.Profile()
        profiles.append(p)
        p.enable()  # replaces this hook for the rest of the thread

    main = cProfile.Profile()
    threading.setprofile(start_in_new_thread)
    main.enable()
    try:
        result, wall = run_ours(predictor, image, params)
    finally:
        main.disable()
        threading.setprofile(None)
    for p in profiles:
        p.disable()
    out = io.StringIO()
    stats = pstats.Stats(main, stream=out)
    for p in profiles:
        stats.add(p)
    t = result.timings
    print(f"  profiled run: {wall:.2f} s wall (under cProfile); stages: embed {t['embed_s']:.2f} s, decode "
          f"{t['decode_s']:.2f} s, filter {t['filter_s']:.2f} s (these two summed over the worker threads, "
          f"{len(profiles)} started), NMS + records {t['records_s']:.2f} s; decoder {t['decoder']}; prompts "
          f"{result.prompts_per_round}, masks before NMS {result.masks_before_nms}, records {len(result.records)}")
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print("  top functions by own time, summed over threads (seconds; the main thread's lock 'acquire' is its wait "
          "for the workers):")
    for line in lines[start:]:
        print("    " + line[:150])


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="a checkout of github.com/xinghaochen/TinySAM")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="state dict in the official layout")
    parser.add_argument("--image", help="an image file, used as is (default: rocket, long side 1024)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--thresholds", default="paper,permissive", help="comma-separated: paper, permissive")
    parser.add_argument("--engine", default="auto,torch", help="comma-separated engines of ours (load_model's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="profile one more run of ours per setting")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_env import describe
    from everything_bench import PERMISSIVE

    known = {"paper": {}, "permissive": PERMISSIVE}
    names = [n.strip() for n in args.thresholds.split(",") if n.strip()]
    if not names or any(n not in known for n in names):
        parser.error(f"--thresholds takes a comma-separated subset of {sorted(known)}, got {args.thresholds!r}")
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    if not engines or args.repeats < 1:
        parser.error("--engine needs at least one engine and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(describe())
    recorder = NmsRecorder()
    tinysam, replaced = import_official(Path(args.official).resolve(), recorder)
    print(f"official: {Path(tinysam.__file__).parent}; stand-ins for {replaced or 'nothing'} "
          f"({'pure-torch NMS, Pillow resize, identity DropPath' if replaced else 'real packages'})")

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.allocator import is_tuned
    from tinysam_backend.everything import EverythingParams

    official_model = tinysam.sam_model_registry["vit_t"](checkpoint=args.checkpoint).eval()
    predictors = {}
    for engine in engines:
        model = load_model(args.checkpoint, engine=engine)
        predictors[engine] = Predictor(model)
        print(f"ours, --engine {engine}: {type(model).__name__} {model.engine_info}")
    image = test_image(args.image)
    print(f"image {image.shape[1]}x{image.shape[0]}, {args.points_per_side} points per side, torch threads "
          f"{torch.get_num_threads()}, tuned malloc (both sides): {is_tuned()}; {args.checkpoint}")

    for name in names:
        thresholds = known[name]
        params = EverythingParams(mode="hierarchical", points_per_side=args.points_per_side, **thresholds)
        print(f"\n== thresholds {name}: {thresholds or 'defaults (0.88 / 0.95 / 8.5)'}")
        times: dict[str, list[float]] = {"official": [], **{e: [] for e in engines}}
        last: dict = {}
        for rnd in range(args.repeats + 1):
            label = "warm-up" if rnd == 0 else f"round {rnd}"
            annotations, wall, second, before_nms = run_official(tinysam, official_model, image,
                                                                 args.points_per_side, thresholds, recorder)
            last["official"] = (annotations, second, before_nms)
            row = [f"official {wall:6.2f} s"]
            if rnd:
                times["official"].append(wall)
            for engine in engines:
                result, wall = run_ours(predictors[engine], image, params)
                last[engine] = result
                row.append(f"ours[{engine}] {wall:6.2f} s")
                if rnd:
                    times[engine].append(wall)
            load = os.getloadavg()
            print(f"  {label:8s} " + ", ".join(row) + f"; load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")

        official_median = statistics.median(times["official"])
        annotations, second, before_nms = last["official"]
        first = (args.points_per_side // 4) ** 2
        before = "" if before_nms is None else f", {before_nms} before NMS"
        print(f"  official: median {official_median:.2f} s, prompts [{first}, {second}], masks {len(annotations)}"
              f"{before}")
        for engine in engines:
            median = statistics.median(times[engine])
            result = last[engine]
            print(f"  ours[{engine}]: median {median:.2f} s, {official_median / median:.1f}x faster than official; "
                  f"prompts {result.prompts_per_round}, masks {len(result.records)}, {result.masks_before_nms} before NMS (decoder "
                  f"{result.timings['decoder']}); {agreement(annotations, result.records)}")
        if args.profile:
            for engine in engines:
                print(f"  -- profile of ours[{engine}], thresholds {name}")
                profile_ours(predictors[engine], image, params, args.profile_top)

    if replaced and "torchvision" in replaced:
        print("\n" + nms_agreement(recorder))
    print(describe())


if __name__ == "__main__":
    from tinysam_backend.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()  # the malloc settings `tinysam` commands run with (the official side shares them)
    main()
