"""Brush RLE speed (not a test): encoding a mask and writing it to JSON, side by side with the slow paths.

    .venv/bin/python benchmarks/brush_rle_bench.py [--runs 20] [--before FILE]

Masks: a 400×600 speckle (what the random-weight parity checkpoint answers; the worst case, ~10⁵ runs) and a
compact object (what a real checkpoint answers). Prints, per mask: `mask_to_brush_rle` against label-studio-sdk's
`mask2rle` (same bytes, checked), and `rle_json` against `json.dumps` of the list. `--before FILE`: also time the
`mask_to_brush_rle` of an older brush_rle.py, e.g. `git show b67e79a:tinysam_backend/label_studio/brush_rle.py`
with `from ..errors` changed to `from tinysam_backend.errors`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
from bench_env import median_time  # benchmarks/ is on sys.path when run as a script

from tinysam_backend.label_studio.brush_rle import mask_to_brush_rle, rle_json


def _median_ms(fn, runs: int) -> float:
    return median_time(fn, runs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--before", help="an older brush_rle.py to time side by side")
    args = parser.parse_args()
    from label_studio_sdk.converter import brush as sdk_brush

    before = None
    if args.before:
        spec = importlib.util.spec_from_file_location("brush_rle_before", args.before)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
    compact = np.zeros((400, 600), bool)
    compact[120:300, 200:420] = True
    masks = {"speckle 400x600": np.random.default_rng(0).random((400, 600)) < 0.5, "object 400x600": compact}
    for name, mask in masks.items():
        rle = mask_to_brush_rle(mask)
        listed = rle.tolist()
        assert listed == sdk_brush.mask2rle(mask.astype(np.uint8) * 255)
        assert json.loads(rle_json(rle)) == listed
        ours = _median_ms(lambda m=mask: mask_to_brush_rle(m), args.runs)
        sdk = _median_ms(lambda m=mask: sdk_brush.mask2rle(m.astype(np.uint8) * 255), max(1, args.runs // 10))
        dumps = _median_ms(lambda v=listed: json.dumps(v), args.runs)
        table = _median_ms(lambda r=rle: rle_json(r), args.runs)
        print(f"{name}: {len(rle)} RLE bytes")
        print(f"  encode: mask_to_brush_rle {ours:.2f} ms, label-studio-sdk mask2rle {sdk:.1f} ms "
              f"(ratio {ours / sdk:.3f}; same bytes)")
        if before is not None:
            old = _median_ms(lambda m=mask: before.mask_to_brush_rle(m), args.runs)
            assert list(before.mask_to_brush_rle(mask)) == listed
            print(f"  encode: before {old:.2f} ms, now {ours:.2f} ms (ratio {ours / old:.2f}; same bytes)")
        print(f"  JSON:   rle_json {table:.2f} ms, json.dumps of the list {dumps:.2f} ms (ratio {table / dumps:.2f})")


if __name__ == "__main__":
    main()
