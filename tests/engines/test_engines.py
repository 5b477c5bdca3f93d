"""Every engine CI can run here, against the official outputs (../shared/parity) or fp32 of the same weights:
OpenVINO fp32 and ONNX Runtime fp32 from a state dict (parity), the graph cache (reuse, atomic under concurrency,
keyed by content), reduced precision within bounds, and clear refusals of what the host cannot run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysam_backend.config import Settings
from tinysam_backend.engines.selection import EngineError, HostFacts

CASES = ("point", "points_pos_neg", "box", "box_point", "refine_with_mask_input")


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _case_prompts(z) -> dict:
    return {"point_coords": z.get("prompt_point_coords"), "point_labels": z.get("prompt_point_labels"),
            "box": z.get("prompt_box"), "mask_input": z.get("prompt_mask_input")}


@pytest.fixture(scope="module")
def cache_settings(tmp_path_factory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("cache"))


def _check_parity(model, parity_dir, parity_images) -> None:
    from tinysam_backend import Predictor

    predictor = Predictor(model)
    assert predictor.low_rank_decoder  # clicks go through the exact low-rank decoder whatever ran the encoder
    for name, rgb in parity_images.items():
        emb = predictor.embed(rgb)
        ref = np.load(parity_dir / f"{name}_embedding.npy")
        assert np.abs(emb.features.numpy() - ref).max() <= 1e-2 * np.abs(ref).max(), name
        for case in CASES:
            z = np.load(parity_dir / f"{name}_{case}.npz")
            masks, scores, low = predictor.predict(emb, **_case_prompts(z))
            assert np.abs(scores - z["iou_predictions"]).max() <= 1e-3, (name, case)
            tol = 5e-3 * max(1.0, float(np.abs(z["low_res_logits"]).max()))
            assert np.abs(low - z["low_res_logits"]).max() <= tol, (name, case)
            for i in range(3):
                assert _mask_iou(masks[i], z["masks"][i]) >= 0.99, (name, case, i)


@pytest.fixture(scope="module")
def openvino_fp32(parity_checkpoint, cache_settings):
    pytest.importorskip("openvino")
    from tinysam_backend import load_model

    return load_model(parity_checkpoint, settings=cache_settings, device="cpu", engine="openvino", precision="fp32")


def test_openvino_fp32_matches_official(openvino_fp32, parity_dir, parity_images):
    from tinysam_backend.engines.openvino_engine import OpenVINOImageEncoder

    assert isinstance(openvino_fp32.encoder_engine, OpenVINOImageEncoder)
    info = openvino_fp32.engine_info
    assert (info["device"], info["engine"], info["precision"]) == ("cpu", "openvino", "fp32")
    assert Path(info["graph"]).is_file() and info["reason"]
    _check_parity(openvino_fp32, parity_dir, parity_images)


def test_openvino_fp32_runs_fp32_kernels(openvino_fp32):
    from tinysam_backend.engines.openvino_engine import runtime_precisions

    counts = runtime_precisions(openvino_fp32.encoder_engine.compiled)
    assert sum(counts.values()) >= 40
    assert {p for (_, p) in counts} == {"f32"}, counts


def test_layer_profile_counts_each_executed_layer_once_per_inference(openvino_fp32):
    import time

    from tinysam_backend.engines.openvino_engine import layer_profile, runtime_precisions

    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    t0 = time.perf_counter()
    rows = layer_profile(openvino_fp32.engine_info["graph"], "fp32", x, runs=2)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert rows and all(r["ms"] >= 0 and r["layers"] >= 1 for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    per_type: dict = {}
    for r in rows:
        per_type[r["layer"]] = per_type.get(r["layer"], 0) + r["layers"]
    compiled = runtime_precisions(openvino_fp32.encoder_engine.compiled)
    # the same runtime graph: as many layers as it has, not × runs (its rt_info calls a depthwise conv "Convolution")
    for kinds in (("FullyConnected",), ("Convolution", "GroupConvolution")):
        assert sum(per_type.get(k, 0) for k in kinds) == sum(n for (t, _), n in compiled.items() if t in kinds), \
            (kinds, per_type, compiled)
    # a mean per inference: below the wall time of the warm-up and the two timed inferences together, over 3
    assert 0 < sum(r["ms"] for r in rows) < wall_ms / 3


def test_onnxruntime_fp32_from_a_state_dict_matches_official(parity_checkpoint, cache_settings, parity_dir,
                                                             parity_images):
    from tinysam_backend import load_model

    model = load_model(parity_checkpoint, settings=cache_settings, engine="onnxruntime", precision="fp32")
    assert model.engine_info["engine"] == "onnxruntime" and model.engine_info["graph"].endswith(".onnx")
    _check_parity(model, parity_dir, parity_images)


def test_engine_model_keeps_the_official_state_dict(openvino_fp32, parity_checkpoint):
    official = torch.load(parity_checkpoint, map_location="cpu", weights_only=True)
    ours = openvino_fp32.state_dict()
    assert set(ours) == set(official)
    assert all(torch.equal(ours[k], official[k]) for k in official)


def test_graph_is_built_once_and_reused(openvino_fp32, parity_checkpoint, cache_settings):
    from tinysam_backend import load_model

    graph = Path(openvino_fp32.engine_info["graph"])
    before = graph.stat().st_mtime_ns
    again = load_model(parity_checkpoint, settings=cache_settings, device="cpu", engine="openvino", precision="fp32")
    assert again.engine_info["graph"] == str(graph) and graph.stat().st_mtime_ns == before
    entries = [p.name for p in (cache_settings.cache_dir / "engines").iterdir()]
    assert not [e for e in entries if e.startswith(".")], entries  # no temporary build directory left


def test_graph_key_follows_the_checkpoint_content(parity_checkpoint, tmp_path):
    from tinysam_backend.engines.graph_cache import file_sha256, graph_key

    changed = torch.load(parity_checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k in changed if k.startswith("image_encoder."))
    changed[name] = changed[name] + 1.0
    torch.save(changed, tmp_path / "changed.pth")
    versions = {"torch": "2.13.0"}
    same_name = graph_key(file_sha256(parity_checkpoint), "vit_t", "openvino", versions)
    assert same_name == graph_key(file_sha256(parity_checkpoint), "vit_t", "openvino", versions)
    assert same_name != graph_key(file_sha256(tmp_path / "changed.pth"), "vit_t", "openvino", versions)
    assert same_name != graph_key(file_sha256(parity_checkpoint), "vit_t", "openvino", {"torch": "2.14.0"})
    assert same_name != graph_key(file_sha256(parity_checkpoint), "vit_t", "onnx", versions)


def test_concurrent_builds_leave_one_complete_graph(tmp_path):
    from tinysam_backend.engines.graph_cache import MANIFEST, cached_graph

    started = threading.Barrier(4)
    results, builds = [], []

    def build(out: Path) -> None:
        builds.append(out)
        started.wait(timeout=30)  # every thread is building at once
        (out / "graph.bin").write_bytes(bytes(range(256)) * 64)

    def worker() -> None:
        results.append(cached_graph(tmp_path, "key", build, {"kind": "test"}))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 4 and len(set(results)) == 1
    final = results[0]
    assert (final / MANIFEST).is_file() and (final / "graph.bin").read_bytes() == bytes(range(256)) * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # the losers' copies are gone
    calls = []
    assert cached_graph(tmp_path, "key", calls.append, {}) == final and calls == []  # cached: not built again


def test_autocast_encoder_is_close_to_fp32(parity_model, parity_images, parity_dir):
    """The torch engine's reduced precision (what CUDA runs by default), measured here with CPU autocast: the best
    mask of every parity prompt against fp32 of the same weights."""
    from tinysam_backend import Predictor
    from tinysam_backend.checkpoint import load_torch_model
    from tinysam_backend.engines.engine_sam import EngineSam

    fp32 = Predictor(parity_model)
    for precision in ("bf16", "fp16"):
        half = Predictor(EngineSam(load_torch_model(parity_dir / "tinysam_random_weights.pth"), autocast=precision))
        ious = []
        for name, rgb in parity_images.items():
            e1, e2 = fp32.embed(rgb), half.embed(rgb)
            assert e2.features.dtype == torch.float32
            for case in CASES:
                z = np.load(parity_dir / f"{name}_{case}.npz")
                m1, s1, _ = fp32.predict(e1, **_case_prompts(z))
                m2, _, _ = half.predict(e2, **_case_prompts(z))
                best = int(np.argmax(s1))
                ious.append(_mask_iou(m1[best], m2[best]))
        # Random weights make masks thresholded noise (a harder case than real weights); the benchmark prints the
        # real figures (benchmarks/engine_bench.py).
        assert np.mean(ious) >= 0.9 and min(ious) >= 0.7, (precision, ious)


def test_cuda_is_refused_clearly_without_a_gpu(parity_checkpoint, cache_settings):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    from tinysam_backend import load_model

    with pytest.raises(EngineError, match="no CUDA device"):
        load_model(parity_checkpoint, settings=cache_settings, device="cuda")
    with pytest.raises(EngineError, match="no CUDA device"):
        load_model(parity_checkpoint, settings=Settings(cache_dir=cache_settings.cache_dir, device="cuda:0"))


def test_bf16_is_refused_or_close_to_fp32(parity_checkpoint, cache_settings, openvino_fp32, parity_images):
    """bf16 where the CPU has it (within bounds of fp32), a clear refusal where it has not."""
    from tinysam_backend import Predictor, load_model

    if not HostFacts.detect(cache_settings.max_cpu_isa).bf16:
        with pytest.raises(EngineError, match="native bf16"):
            load_model(parity_checkpoint, settings=cache_settings, engine="openvino", precision="bf16")
        return
    bf16 = Predictor(load_model(parity_checkpoint, settings=cache_settings, engine="openvino", precision="bf16"))
    fp32 = Predictor(openvino_fp32)
    for rgb in parity_images.values():
        a, b = fp32.embed(rgb).features, bf16.embed(rgb).features
        assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_segment_cli_refuses_cuda_without_a_gpu(parity_checkpoint, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (32, 24), (10, 200, 30)).save(tmp_path / "img.png")
    proc = subprocess.run([sys.executable, "-m", "tinysam_backend.cli", "segment", str(tmp_path / "img.png"),
                           "--checkpoint", str(parity_checkpoint), "--point", "1,1", "--out", str(tmp_path / "o"),
                           "--device", "cuda"], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr, proc.stderr
