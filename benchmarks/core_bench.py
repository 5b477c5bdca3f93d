"""fp32 PyTorch path: encoder time per image and decoder time per prompt (Sam.decode and the low-rank decoder
side by side), on the machine it runs on.

    python benchmarks/core_bench.py [--checkpoint PATH] [--runs 5] [--rounds 2]
    python benchmarks/core_bench.py --click [--runs 5] [--threads N] [--profile]

Each measurement runs in a fresh process, alternately with glibc's default malloc and with the settings of
`tinysam_backend/allocator.py` (read by glibc at process start), `rounds` processes each; prints medians over
`runs` after one warm-up, both columns side by side. The parity checkpoint (random weights, official layout) times
exactly like the real one: the arithmetic does not depend on the values.

--click: only the Label Studio click of the issue's target, `Predictor.predict_batch(emb, one point,
best_only=True)` on a cached embedding of the 512 × 512 astronaut (low-rank decoder, and `Sam.decode` beside it),
with torch at 1 and at 2 intra-op threads (or `--threads`), tuned malloc: wall median and minimum and the process's
CPU time per click over 20 × `runs` clicks, after the CPU model, flags and load average. On a machine shared with
other work the CPU time is the steadier figure; wall time there measures the load as much as the click.
--profile adds the CPU time of each aten operator of the low-rank click (thread CPU time around each call, so
meaningful at one thread), largest first.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from bench_env import interleaved, median_time  # benchmarks/ is on sys.path when run as a script


def _reference_arithmetic(model) -> None:
    """Switch a model's TinyViT to the official structure: BatchNorm as a separate pass, explicit softmax
    attention. Used only here, to time our encoder against the same arithmetic the official code runs."""
    import types

    import torch.nn.functional as F

    from tinysam_backend.modeling.image_encoder_tinyvit import ConvBN, WindowAttention

    def convbn_forward(self, x):
        return self.bn(self.c(x))

    def attn_forward(self, x):
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.key_dim).permute(0, 2, 1, 3).split(self.key_dim, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1))

    for m in model.modules():
        if isinstance(m, ConvBN):
            m.forward = types.MethodType(convbn_forward, m)
        elif isinstance(m, WindowAttention):
            m.forward = types.MethodType(attn_forward, m)
    del F


def measure(args) -> dict:
    import skimage.data

    from tinysam_backend import Predictor, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(load_model(args.checkpoint))
    image = skimage.data.astronaut()
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(image).resize((1024, 1024)))
    x, _, _ = predictor.prepare(image)
    reference = load_model(args.checkpoint)
    _reference_arithmetic(reference)
    with torch.inference_mode():
        t = interleaved({"ours": lambda: predictor.model.encode_image(x),
                          "reference": lambda: reference.encode_image(x)}, args.runs)
        diff = (predictor.model.encode_image(x) - reference.encode_image(x)).abs().max().item()
    emb = predictor.embed(image)
    plain = Predictor(predictor.model, low_rank_decoder=False)
    emb_plain = plain.embed(image)
    coords = np.random.default_rng(0).uniform(0, 1024, (64, 1, 2))
    _, _, low = predictor.predict(emb, [[500, 400]], [1])
    refine = {"point_coords": [[500, 400], [300, 700], [600, 200]], "point_labels": [1, 0, 1], "mask_input": low[:1]}
    clicks = interleaved({  # each path as the user calls it; "model" is Sam.decode, the rest the low-rank decoder
        "click_model": lambda: plain.predict(emb_plain, [[500, 400]], [1]),
        "click": lambda: predictor.predict(emb, [[500, 400]], [1]),
        "refine_model": lambda: plain.predict(emb_plain, **refine),
        "refine": lambda: predictor.predict(emb, **refine),
        # What the Label Studio backend runs per click: the best of the three masks only.
        "click_best": lambda: predictor.predict_batch(emb, [[[500, 400]]], [[1]], best_only=True),
        "refine_best": lambda: predictor.predict_batch(emb, [refine["point_coords"]], [refine["point_labels"]],
                                                       mask_input=low[None, :1], best_only=True),
    }, args.runs * 4)
    from tinysam_backend.modeling.lowrank_decoder import ImageContext

    return {
        "threads": torch.get_num_threads(),
        "reference": t["reference"], "ours": t["ours"], "diff": diff,
        "embed": median_time(lambda: predictor.embed(image), args.runs),
        "context": median_time(lambda: ImageContext(predictor.model, emb.features), args.runs),
        "context_bytes": emb.context.nbytes,
        **clicks,
        "click_box": median_time(lambda: predictor.predict(emb, [[500, 400]], [1], box=[300, 200, 700, 600]),
                                  args.runs * 4),
        "batch64_model": median_time(lambda: plain.predict_batch(emb_plain, coords, np.ones((64, 1)),
                                                                  return_masks=False), args.runs) / 64,
        "batch64": median_time(lambda: predictor.predict_batch(emb, coords, np.ones((64, 1)), return_masks=False),
                                args.runs) / 64,
    }


def measure_click(args) -> dict:
    """Wall and process CPU seconds per click (see the module docstring), both decoders interleaved."""
    import os
    import time

    import skimage.data

    from tinysam_backend import Predictor, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(load_model(args.checkpoint))
    plain = Predictor(predictor.model, low_rank_decoder=False)
    image = skimage.data.astronaut()  # 512 × 512
    emb, emb_plain = predictor.embed(image), plain.embed(image)
    point, label = np.array([[[200.0, 150.0]]]), np.array([[1]])
    clicks = {"low-rank": lambda: predictor.predict_batch(emb, point, label, best_only=True),
              "Sam.decode": lambda: plain.predict_batch(emb_plain, point, label, best_only=True)}
    wall: dict[str, list[float]] = {k: [] for k in clicks}
    cpu: dict[str, list[float]] = {k: [] for k in clicks}
    for fn in clicks.values():
        for _ in range(3):
            fn()
    for _ in range(args.runs * 20):
        for name, fn in clicks.items():  # in turns, so that the machine's load hits both alike
            t, c = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
    return {"threads": torch.get_num_threads(), "load": os.getloadavg()[0],
            **{name: {"wall_median": statistics.median(wall[name]), "wall_min": min(wall[name]),
                      "cpu_median": statistics.median(cpu[name])} for name in clicks},
            "profile": _operator_cpu(clicks["low-rank"], args.runs * 4) if args.profile else []}


def _operator_cpu(fn, runs: int) -> list:
    """[(operator, input shapes, calls, CPU seconds per call of fn)] for every aten operator fn runs, largest first."""
    import time
    from collections import defaultdict

    from torch.utils._python_dispatch import TorchDispatchMode

    totals: dict = defaultdict(lambda: [0, 0])

    class _Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.thread_time_ns()
            out = func(*args, **(kwargs or {}))
            key = (str(func), str([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
            totals[key][0] += time.thread_time_ns() - start
            totals[key][1] += 1
            return out

    for _ in range(runs):
        with _Timer():
            fn()
    rows = [(op, shapes, calls // runs, ns / runs / 1e9) for (op, shapes), (ns, calls) in totals.items()]
    return sorted(rows, key=lambda row: -row[3])


def _click_table(args) -> None:
    from bench_env import describe

    print(describe())
    print(f"torch {torch.__version__}; tuned malloc; {args.runs * 20} clicks per row, after 3 warm-up clicks")
    print(f"{'click, 512x512 astronaut, best mask':40s}{'threads':>8s}{'wall median':>13s}{'wall min':>11s}"
          f"{'CPU median':>12s}{'load':>7s}")
    for threads in [args.threads] if args.threads else [1, 2]:
        args.threads = threads
        r = _run_child(args, tuned=True, click=True)
        for name in ("low-rank", "Sam.decode"):
            ms = {k: v * 1000 for k, v in r[name].items()}
            print(f"{name:40s}{r['threads']:8d}{ms['wall_median']:10.1f} ms{ms['wall_min']:8.1f} ms"
                  f"{ms['cpu_median']:9.1f} ms{r['load']:7.1f}")
        if r["profile"]:
            total = sum(row[3] for row in r["profile"])
            print(f"  aten operators of one low-rank click at {r['threads']} thread(s), CPU time ({total * 1000:.1f} ms "
                  f"in all, timing overhead included), largest 30:")
            for op, shapes, calls, seconds in r["profile"][:30]:
                print(f"  {seconds * 1000:7.2f} ms {calls:3d}x {op:34s} {shapes}")
        args.threads = 0


def _run_child(args, tuned: bool, click: bool = False) -> dict:
    """One measurement in a fresh process, with or without the malloc variables (read by glibc at start)."""
    import json
    import os
    import subprocess
    import sys

    from tinysam_backend.allocator import ALLOCATOR_ENV

    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    env["TINYSAM_MALLOC_TUNING"] = "0"
    if tuned:
        env.update(ALLOCATOR_ENV)
    cmd = [sys.executable, __file__, "--child", "--checkpoint", args.checkpoint, "--runs", str(args.runs),
           "--threads", str(args.threads)] + (["--click"] if click else []) + (["--profile"] if args.profile else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import json
    import os

    default_ckpt = Path(__file__).resolve().parents[2] / "shared" / "parity" / "tinysam_random_weights.pth"
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(default_ckpt))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternating (default malloc, tuned malloc) processes")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    ap.add_argument("--click", action="store_true", help="only a click, at 1 and 2 threads (see above)")
    ap.add_argument("--profile", action="store_true", help="with --click: CPU time per aten operator")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_click(args) if args.click else measure(args)))
        return
    if args.click:
        _click_table(args)
        return
    results = {"default": [], "tuned": []}
    for _ in range(args.rounds):  # alternate, so that machine load hits both alike
        results["default"].append(_run_child(args, tuned=False))
        results["tuned"].append(_run_child(args, tuned=True))
    med = {k: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for k, rs in results.items()}
    print(f"torch {torch.__version__}, threads {int(med['tuned']['threads'])}, load average "
          f"{os.getloadavg()[0]:.2f}; medians of {args.rounds} process(es) per column x {args.runs} runs")
    print(f"{'':48s}{'glibc default':>15s}{'tuned malloc':>15s}{'tuned/default':>15s}")
    rows = [("encoder forward, official arithmetic", "reference"), ("encoder forward (1024x1024), ours", "ours"),
            ("embed incl. resize/normalise + decoder context", "embed"), ("  of which: decoder context", "context"),
            ("single click predict, Sam.decode", "click_model"), ("single click predict, low-rank decoder", "click"),
            ("refine (3 points + mask), Sam.decode", "refine_model"),
            ("refine (3 points + mask), low-rank decoder", "refine"),
            ("single click, best mask only, low-rank", "click_best"), ("refine, best mask only, low-rank", "refine_best"),
            ("click + box predict, low-rank", "click_box"),
            ("batch of 64, per prompt, Sam.decode", "batch64_model"), ("batch of 64, per prompt, low-rank", "batch64")]
    for label, key in rows:
        d, t = med["default"][key] * 1000, med["tuned"][key] * 1000
        print(f"{label:48s}{d:12.1f} ms{t:12.1f} ms{t / d:15.2f}")
    for k in ("default", "tuned"):
        print(f"ours / official arithmetic, {k:7s} malloc: {med[k]['ours'] / med[k]['reference']:.2f} "
              f"(max |diff| {med[k]['diff']:.2e})")
    for k in ("default", "tuned"):
        print(f"low-rank / Sam.decode, {k:7s} malloc: click {med[k]['click'] / med[k]['click_model']:.2f}, refine "
              f"{med[k]['refine'] / med[k]['refine_model']:.2f}, batch {med[k]['batch64'] / med[k]['batch64_model']:.2f}")
    print(f"decoder context (ImageContext.nbytes) per image: {med['tuned']['context_bytes'] / 2**20:.1f} MiB "
          f"({int(med['tuned']['context_bytes']):,} bytes)")
    print("tuned malloc is what `tinysam` commands and `tinysam serve` run with (tinysam_backend/allocator.py)")


if __name__ == "__main__":
    main()
