"""W8A8 int8 vs fp32, in one run: encoder and decoder speed, and accuracy against fp32 of the same weights.

    python benchmarks/quantization_bench.py --int8 DIR [--checkpoint CKPT] [--runs 5] [--threads N]
                                            [--skip-everything]

Speed (interleaved runs, medians, so that machine load hits every path alike): image encoder for PyTorch fp32
eager, ONNX Runtime fp32 and ONNX Runtime int8; mask decoder per single-click prompt (batch of 1) and per
prompt in a batch of 64, for the same three and for the fp32 low-rank decoder (what `Predictor` runs for fp32). Targets: int8 encoder >= 3x faster than PyTorch eager; single click <= 30 ms.

Accuracy, on the parity images and prompts (../shared/parity): the int8 model against PyTorch fp32 of the
same weights, mean IoU of the best-scored mask for point prompts and box prompts (target >= 0.95), and
everything-mode recall (fp32 masks that int8 finds with mask IoU >= 0.5 / 0.75). With the parity checkpoint
(random weights, noisy masks) this is a proxy, harder than real weights: masks of random weights are
thresholded noise, so small logit changes flip many pixels.

Without --int8 the artifact is built first with `quantize_model` and the default recipe (minutes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_env import interleaved, mask_iou  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARITY = REPO.parent / "shared" / "parity"
POINT_CASES = ("point", "points_pos_neg")
BOX_CASES = ("box", "box_point")


def _case_prompts(z) -> dict:
    return {"point_coords": z.get("prompt_point_coords"), "point_labels": z.get("prompt_point_labels"),
            "box": z.get("prompt_box"), "mask_input": z.get("prompt_mask_input")}


def _images(manifest: dict) -> dict:
    import skimage.data

    from tinysam_backend.image_io import array_to_rgb

    return {name: array_to_rgb(getattr(skimage.data, name)()) for name in manifest["images"]}


def speed(models: dict, runs: int) -> dict:
    from tinysam_backend.modeling.lowrank_decoder import LowRankDecoder

    s = next(iter(models.values())).image_size
    x = torch.randn(1, 3, s, s)
    with torch.inference_mode():
        enc = interleaved({k: (lambda m=m: m.encode_image(x)) for k, m in models.items()}, runs)
        emb = {k: m.encode_image(x) for k, m in models.items()}
        click = (torch.tensor([[[400.0, 300.0]]]), torch.ones(1, 1, dtype=torch.int64))
        # The fp32 model's decoder also as `Predictor` runs it: the low-rank decoder over the image's context.
        lowrank = LowRankDecoder(models["pytorch_fp32"], emb["pytorch_fp32"])
        decoders = {k: (lambda prompts, m=m, k=k: m.decode(emb[k], prompts)) for k, m in models.items()}
        decoders["pytorch_fp32_lowrank"] = lowrank.decode
        dec1 = interleaved({k: (lambda f=f: f(click)) for k, f in decoders.items()}, runs * 4)
        rng = np.random.default_rng(0)
        many = (torch.from_numpy(rng.uniform(0, s, (64, 1, 2)).astype(np.float32)), torch.ones(64, 1, dtype=torch.int64))
        dec64 = interleaved({k: (lambda f=f: f(many)) for k, f in decoders.items()}, runs)
    return {"encoder_s": enc, "decode_single_click_ms": {k: v * 1e3 for k, v in dec1.items()},
            "decode_per_prompt_in_batch64_ms": {k: v * 1e3 / 64 for k, v in dec64.items()}}


def accuracy(reference, candidate, parity: Path, manifest: dict, images: dict, everything: bool) -> dict:
    from tinysam_backend import Predictor

    ref, cand = Predictor(reference), Predictor(candidate)
    out: dict = {"point": [], "box": [], "refine": [], "embedding_rel_max_err": {}, "iou_pred_max_abs_err": 0.0}
    embs = {}
    for name, rgb in images.items():
        e_ref, e_c = ref.embed(rgb), cand.embed(rgb)
        embs[name] = (e_ref, e_c)
        rel = float((e_c.features - e_ref.features).abs().max() / e_ref.features.abs().max())
        out["embedding_rel_max_err"][name] = round(rel, 4)
        for case in POINT_CASES + BOX_CASES + ("refine_with_mask_input",):
            z = np.load(parity / f"{name}_{case}.npz")
            m1, s1, _ = ref.predict(e_ref, **_case_prompts(z))
            m2, s2, _ = cand.predict(e_c, **_case_prompts(z))
            best = int(np.argmax(s1))
            key = "point" if case in POINT_CASES else "box" if case in BOX_CASES else "refine"
            out[key].append(mask_iou(m1[best], m2[best]))
            out["iou_pred_max_abs_err"] = max(out["iou_pred_max_abs_err"], float(np.abs(s1 - s2).max()))
    res = {f"mean_best_mask_iou_{k}": round(float(np.mean(out[k])), 4) for k in ("point", "box", "refine")}
    res["per_prompt_best_mask_iou"] = {k: [round(v, 4) for v in out[k]] for k in ("point", "box", "refine")}
    res["embedding_rel_max_err"] = out["embedding_rel_max_err"]
    res["iou_pred_max_abs_err"] = round(out["iou_pred_max_abs_err"], 4)
    if everything:
        res["everything"] = everything_recall(ref, cand, embs, manifest)
    return res


def everything_recall(ref, cand, embs: dict, manifest: dict) -> dict:
    from pycocotools import mask as mask_utils

    from tinysam_backend import segment_everything

    result = {}
    for name, (e_ref, e_c) in embs.items():
        for run in ("everything_hierarchical", "everything_hierarchical_nonms"):
            params = manifest["images"][name][run]["params"]
            r1 = segment_everything(ref, e_ref, mode="hierarchical", **params)
            r2 = segment_everything(cand, e_c, mode="hierarchical", **params)
            rec = {}
            if r1 and r2:
                ious = mask_utils.iou([r["segmentation"] for r in r1], [r["segmentation"] for r in r2],
                                      [0] * len(r2))
                best = np.asarray(ious).max(axis=1)
                rec = {"recall@0.5": round(float((best >= 0.5).mean()), 4),
                       "recall@0.75": round(float((best >= 0.75).mean()), 4)}
            elif r1:
                rec = {"recall@0.5": 0.0, "recall@0.75": 0.0}
            result[f"{name}/{run}"] = {"fp32_masks": len(r1), "int8_masks": len(r2), **rec}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_PARITY / "tinysam_random_weights.pth"))
    ap.add_argument("--parity", default=str(DEFAULT_PARITY))
    ap.add_argument("--int8", help="artifact from `tinysam quantize` (built here with the default recipe if absent)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="threads for torch and ONNX Runtime (0: all cores)")
    ap.add_argument("--skip-everything", action="store_true")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    from tinysam_backend import load_model
    from tinysam_backend.quantization.export import export_onnx
    from tinysam_backend.quantization.runtime import load_quantized

    if args.threads:
        torch.set_num_threads(args.threads)
    parity = Path(args.parity)
    manifest = json.loads((parity / "manifest.json").read_text())
    fp32 = load_model(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(fp32, Path(tmp) / "fp32")
        int8_dir = args.int8
        if int8_dir is None:
            from tinysam_backend.quantization.artifact import quantize_model
            from tinysam_backend.quantization.calibration_data import default_calibration_images

            int8_dir = quantize_model(fp32, default_calibration_images(), Path(tmp) / "int8")
        # Both graphs in ONNX Runtime. What `load_model(int8 dir)` serves by default is the int8 encoder with the
        # fp32 low-rank decoder: its figures are the onnx_int8 encoder and the pytorch_fp32_lowrank decoder rows.
        models = {"pytorch_fp32": fp32, "onnx_fp32": load_quantized(Path(tmp) / "fp32", args.threads, decoder="onnx"),
                  "onnx_int8": load_quantized(int8_dir, args.threads, decoder="onnx")}
        report = {"threads": args.threads or torch.get_num_threads(), "int8": str(int8_dir)}
        report["speed"] = speed(models, args.runs)
        enc = report["speed"]["encoder_s"]
        report["speed"]["encoder_speedup_vs_pytorch"] = {k: round(enc["pytorch_fp32"] / v, 2) for k, v in enc.items()}
        print(json.dumps({"speed": report["speed"]}, indent=2), flush=True)
        images = _images(manifest)
        report["accuracy_int8_vs_pytorch_fp32"] = accuracy(fp32, models["onnx_int8"], parity, manifest, images,
                                                           not args.skip_everything)
        report["accuracy_onnx_fp32_vs_pytorch_fp32"] = accuracy(fp32, models["onnx_fp32"], parity, manifest, images,
                                                                False)
    print(json.dumps({k: v for k, v in report.items() if k != "speed"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    from tinysam_backend.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()  # the malloc settings `tinysam` commands run with
    main()
