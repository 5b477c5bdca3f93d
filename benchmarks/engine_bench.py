"""Inference engines side by side in one run: image-encoder time, accuracy against fp32, and a click.

    python benchmarks/engine_bench.py [--checkpoint CKPT] [--int8 DIR] [--nncf] [--official DIR] [--runs 3]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/engine_bench.py   # an AVX2-only host

Rows (each encoder timed interleaved with the others, medians after one warm-up, 1024² input): our PyTorch fp32
(the torch engine), OpenVINO fp32 / bf16 (bf16 only where the CPU has it) of the state dict's graph, ONNX Runtime
fp32, and with --int8 the int8 artifact in ONNX Runtime and in OpenVINO (our scales, Q/DQ placed for OpenVINO);
--nncf adds NNCF's default post-training quantization of the same fp32 graph in OpenVINO (`pip install nncf`).
Also: what `load_model(..., "auto")` picks here, its ratio to PyTorch fp32, every non-fp32 row's best-mask IoU
against PyTorch fp32 over the parity prompts (mean and worst; target mean >= 0.97, worst >= 0.90) and a click with
a cached embedding through the auto model (low-rank decoder). Prints the CPU flags and the ISA cap in force.
--official DIR (a checkout of github.com/xinghaochen/TinySAM, imported as `everything_vs_official.py` does) adds the
official image encoder in PyTorch fp32 on the same weights, timed in the same interleaved rounds: the first row of
the issue's table, and the ratio of every row to it.
--profile then prints where each encoder's time goes: per (layer type, kernel) for every OpenVINO row that
`load_model` built (not the NNCF row; its `PERF_COUNT` counters, `engines.openvino_engine.layer_profile`, mean of `runs` inferences) and per aten operator
for our PyTorch fp32 encoder (torch.profiler, self CPU time per inference).

On an AVX-512 host `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2` caps oneDNN
(PyTorch's convolutions, OpenVINO), ATen's own kernels and MKL's GEMMs at AVX2; ONNX Runtime's MLAS kernels have no
such cap and still use what the CPU has, so its rows there are not an AVX2 host's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_env import interleaved, mask_iou  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "parity"
OFFICIAL = "official TinySAM, PyTorch fp32"
CASES = ("point", "points_pos_neg", "box", "box_point", "refine_with_mask_input")


def _accuracy(reference, predictor, images: dict) -> tuple[float, float]:
    """Best-mask IoU (the fp32 model's best mask index) of every parity prompt, mean and worst."""
    ious = []
    for name, rgb in images.items():
        e_ref, e = reference.embed(rgb), predictor.embed(rgb)
        for case in CASES:
            z = np.load(PARITY / f"{name}_{case}.npz")
            kw = {"point_coords": z.get("prompt_point_coords"), "point_labels": z.get("prompt_point_labels"),
                  "box": z.get("prompt_box"), "mask_input": z.get("prompt_mask_input")}
            m1, s1, _ = reference.predict(e_ref, **kw)
            m2, _, _ = predictor.predict(e, **kw)
            best = int(np.argmax(s1))
            ious.append(mask_iou(m1[best], m2[best]))
    return float(np.mean(ious)), float(np.min(ious))


def _nncf_encoder(checkpoint: Path, cache: Path, images: list) -> tuple[object, float]:
    """NNCF's default PTQ (`nncf.quantize` with its defaults) of the fp32 OpenVINO graph, calibrated on the same
    images as `tinysam quantize`; returns (encoder module, seconds it took)."""
    import nncf
    import openvino as ov

    from tinysam_backend.checkpoint import load_torch_model
    from tinysam_backend.engines import encoder_graph
    from tinysam_backend.engines.openvino_engine import OpenVINOImageEncoder, compile_encoder
    from tinysam_backend.modeling import image_to_input

    sam = load_torch_model(checkpoint)
    graph = encoder_graph(checkpoint, sam, "openvino", cache)
    data = []
    for rgb in images:
        data.append(image_to_input(rgb, sam.image_size)[0].numpy())
    t0 = time.perf_counter()
    quantized = nncf.quantize(ov.Core().read_model(str(graph)), nncf.Dataset(data), subset_size=len(data))
    seconds = time.perf_counter() - t0
    out = cache / "nncf_int8.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return OpenVINOImageEncoder(compile_encoder(out, "int8"), sam.image_size, "int8"), seconds


def _print_profiles(models: dict, x: torch.Tensor, runs: int, top: int) -> None:
    """Per-layer time of every OpenVINO row (its own graph and precision) and per-operator time of PyTorch fp32."""
    from tinysam_backend.engines.openvino_engine import layer_profile

    for name, model in models.items():
        info = getattr(model, "engine_info", None) or {}
        if info.get("engine") != "openvino":
            continue
        rows = layer_profile(info["graph"], info["precision"], x.numpy(), runs)
        total = sum(r["ms"] for r in rows)
        print(f"\nprofile of {name} ({Path(info['graph']).name}): {total:.1f} ms in executed layers per inference")
        print("| layer type | kernel | layers | ms | share |\n|---|---|---|---|---|")
        for r in rows[:top]:
            print(f"| {r['layer']} | {r['kernel']} | {r['layers']} | {r['ms']:.1f} | {r['ms'] / total:.0%} |")
    encoder = models["pytorch fp32"]
    with torch.inference_mode():
        encoder.encode_image(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                encoder.encode_image(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / runs
    print(f"\nprofile of pytorch fp32 (self CPU time of aten operators, summed over threads): {total:.1f} ms per "
          "inference")
    print("| operator | calls | ms | share |\n|---|---|---|---|")
    for e in events[:top]:
        ms = e.self_cpu_time_total / 1e3 / runs
        print(f"| {e.key} | {e.count // runs} | {ms:.1f} | {ms / total:.0%} |")


def main() -> None:
    from tinysam_backend.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()  # PyTorch fp32 as `tinysam` runs it (benchmarks/core_bench.py shows why)
    import json
    import logging

    import skimage.data

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.checkpoint import load_torch_model
    from tinysam_backend.config import Settings
    from tinysam_backend.engines.engine_sam import EngineSam
    from tinysam_backend.engines.selection import HostFacts
    from tinysam_backend.image_io import array_to_rgb

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(PARITY / "tinysam_random_weights.pth"))
    p.add_argument("--int8", help="an int8 artifact directory of `tinysam quantize` (same checkpoint)")
    p.add_argument("--nncf", action="store_true", help="add NNCF's default PTQ in OpenVINO (needs nncf)")
    p.add_argument("--official", help="a checkout of github.com/xinghaochen/TinySAM: time its encoder too")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="per-layer profile of every OpenVINO row and of PyTorch")
    p.add_argument("--profile-top", type=int, default=12)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    facts = HostFacts.detect(settings.max_cpu_isa)
    raw_flags = HostFacts.detect(None).flags_summary()
    print(f"CPU flags: {' '.join(raw_flags)}; ISA cap: {settings.max_cpu_isa or 'none'} "
          f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}) -> flags used: "
          f"{' '.join(facts.flags_summary())}; threads {torch.get_num_threads()}; torch {torch.__version__}")
    manifest = json.loads((PARITY / "manifest.json").read_text())
    images = {n: array_to_rgb(getattr(skimage.data, n)()) for n in manifest["images"]}
    ckpt = Path(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        cache = dataclasses.replace(settings, cache_dir=Path(tmp))  # keeps the ISA cap: auto decides by it
        models = {"pytorch fp32": EngineSam(load_torch_model(ckpt)).eval(),
                  "openvino fp32": load_model(ckpt, settings=cache, device="cpu", engine="openvino", precision="fp32"),
                  "onnxruntime fp32": load_model(ckpt, settings=cache, engine="onnxruntime", precision="fp32")}
        if facts.bf16:
            models["openvino bf16"] = load_model(ckpt, settings=cache, engine="openvino", precision="bf16")
        if args.int8:
            models["onnxruntime int8 (artifact)"] = load_model(args.int8, settings=cache, engine="onnxruntime")
            models["openvino int8 (our scales)"] = load_model(args.int8, settings=cache, engine="openvino")
        nncf_seconds = None
        if args.nncf:
            from tinysam_backend.quantization.calibration_data import default_calibration_images

            enc, nncf_seconds = _nncf_encoder(ckpt, Path(tmp), default_calibration_images())
            models["openvino int8 (NNCF default PTQ)"] = EngineSam(load_torch_model(ckpt), enc).eval()
        auto = load_model(ckpt, settings=cache)
        x = torch.randn(1, 3, 1024, 1024)
        timed = {k: (lambda m=m: m.encode_image(x)) for k, m in models.items()}
        if args.official:
            from everything_vs_official import NmsRecorder, import_official

            official = import_official(Path(args.official).resolve(), NmsRecorder())[0]
            official_sam = official.sam_model_registry["vit_t"](checkpoint=str(ckpt)).eval()
            timed[OFFICIAL] = lambda: official_sam.image_encoder(x)
        with torch.inference_mode():
            enc = interleaved(timed, args.runs)
        base = enc["pytorch fp32"]
        auto_key = f"{auto.engine_info['engine']} {auto.engine_info['precision']}"
        print(f"\nauto picks: {auto.engine_info['engine']} {auto.engine_info['precision']} on "
              f"{auto.engine_info['device']} ({auto.engine_info['reason']})")
        vs_official = OFFICIAL in enc
        print("\n| image encoder | seconds | vs our PyTorch fp32 |" + (" vs official PyTorch fp32 |" if vs_official else "")
              + " best-mask IoU vs fp32 (mean / worst) |")
        print("|---|---|---|" + ("---|" if vs_official else "") + "---|")
        if vs_official:
            print(f"| {OFFICIAL} | {enc[OFFICIAL]:.3f} | {base / enc[OFFICIAL]:.2f}x | 1.00x | (not compared) |")
        reference = Predictor(models["pytorch fp32"])
        for k, m in models.items():
            acc = "(reference)"
            if k != "pytorch fp32":
                mean, worst = _accuracy(reference, Predictor(m), images)
                acc = f"{mean:.4f} / {worst:.4f}"
            mark = " **(auto)**" if k == auto_key else ""
            ratio = f" {enc[OFFICIAL] / enc[k]:.2f}x |" if vs_official else ""
            print(f"| {k}{mark} | {enc[k]:.3f} | {base / enc[k]:.2f}x |{ratio} {acc} |")
        if nncf_seconds is not None:
            print(f"\nNNCF quantize (statistics + bias correction, {len(default_calibration_images())} images): "
                  f"{nncf_seconds:.1f} s")
        if args.profile:
            _print_profiles(models, x, args.runs, args.profile_top)
        pred = Predictor(auto)
        emb = pred.embed(images["astronaut"])
        pt = np.array([[200.0, 150.0]])
        lab = np.array([1])
        clicks = interleaved({"click": lambda: pred.predict_batch(emb, pt[None], lab[None], best_only=True)},
                              args.runs * 10)
        print(f"\nclick with a cached embedding (auto model, low-rank decoder, best mask + upscaled mask): "
              f"{clicks['click'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
