"""fp32 PyTorch path: encoder time per image and decoder time per prompt, on this machine.

    python benchmarks/core_bench.py [--checkpoint PATH] [--runs 5]

Prints medians over `runs` after one warm-up. The parity checkpoint (random weights, official layout) times
exactly like the real one: the arithmetic does not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _median_time(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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


def _interleaved(fns: dict, runs: int) -> dict:
    """Median time of each function, run in turns so that machine load hits all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    import skimage.data

    from tinysam_backend import Predictor, load_model

    default_ckpt = Path(__file__).resolve().parents[2] / "shared" / "parity" / "tinysam_random_weights.pth"
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(default_ckpt))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(load_model(args.checkpoint))
    image = skimage.data.astronaut()
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(image).resize((1024, 1024)))
    x, _, _ = predictor.prepare(image)
    reference = load_model(args.checkpoint)
    _reference_arithmetic(reference)
    with torch.inference_mode():
        t = _interleaved({"ours": lambda: predictor.model.encode_image(x),
                          "reference": lambda: reference.encode_image(x)}, args.runs)
        diff = (predictor.model.encode_image(x) - reference.encode_image(x)).abs().max().item()
    enc = t["ours"]
    embed = _median_time(lambda: predictor.embed(image), args.runs)
    emb = predictor.embed(image)
    click = _median_time(lambda: predictor.predict(emb, [[500, 400]], [1]), args.runs * 4)
    click_box = _median_time(lambda: predictor.predict(emb, [[500, 400]], [1], box=[300, 200, 700, 600]), args.runs * 4)
    coords = np.random.default_rng(0).uniform(0, 1024, (64, 1, 2))
    batch = _median_time(lambda: predictor.predict_batch(emb, coords, np.ones((64, 1)), return_masks=False), args.runs)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"encoder forward, official arithmetic : {t['reference'] * 1000:8.1f} ms")
    print(f"encoder forward (1024x1024), ours   : {enc * 1000:8.1f} ms  "
          f"(ratio ours/official {enc / t['reference']:.2f}, max |diff| {diff:.2e})")
    print(f"embed incl. resize/normalise        : {embed * 1000:8.1f} ms")
    print(f"single click predict (masks at 1024): {click * 1000:8.1f} ms")
    print(f"click + box predict                 : {click_box * 1000:8.1f} ms")
    print(f"batched decode, 64 prompts, per prompt (no upscaling): {batch / 64 * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
