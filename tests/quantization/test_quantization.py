"""Quantization: fp32 ONNX export parity, the prompt layout, and a fast real calibration on the parity model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysam_backend.errors import CheckpointError
from tinysam_backend.quantization.prompts import prompt_to_points

CASES = ("point", "points_pos_neg", "box", "box_point", "refine_with_mask_input")


def _case_prompts(z) -> dict:
    return {"point_coords": z.get("prompt_point_coords"), "point_labels": z.get("prompt_point_labels"),
            "box": z.get("prompt_box"), "mask_input": z.get("prompt_mask_input")}


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ----------------------------------------------------------------------------- pure functions
def test_prompt_to_points_pads_clicks_without_box():
    coords, labels = prompt_to_points((np.array([[[1.0, 2.0]]]), np.array([[1]])), None, 1)
    assert coords.shape == (1, 2, 2) and labels.tolist() == [[1.0, -1.0]]
    assert coords.dtype == np.float32 and coords[0, 0].tolist() == [1.0, 2.0]


def test_prompt_to_points_box_corners_follow_points():
    pts = (np.zeros((2, 1, 2)), np.zeros((2, 1)))
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    coords, labels = prompt_to_points(pts, boxes, 2)
    assert labels.tolist() == [[0.0, 2.0, 3.0]] * 2
    assert coords[1, 1:].tolist() == [[5.0, 6.0], [7.0, 8.0]]


def test_prompt_to_points_mask_only_and_bad_shapes():
    coords, labels = prompt_to_points(None, None, 3)
    assert coords.shape == (3, 0, 2) and labels.shape == (3, 0)
    with pytest.raises(ValueError, match="boxes must be"):
        prompt_to_points(None, np.zeros((2, 4)), 1)


def test_onnx_scope_matches_exporter_naming(tiny_model):
    from tinysam_backend.quantization.points import onnx_scope

    assert onnx_scope(tiny_model, "image_encoder.layers.1.blocks.0.attn.qkv") == "/image_encoder/layers.1/blocks.0/attn/qkv"
    assert onnx_scope(tiny_model, "image_encoder.patch_embed.seq.0") == "/image_encoder/patch_embed/seq/seq.0"
    assert onnx_scope(tiny_model, "mask_decoder.output_hypernetworks_mlps.2.layers.0") == \
        "/mask_decoder/output_hypernetworks_mlps.2/layers.0"


def test_fake_quant_is_symmetric_int8():
    from tinysam_backend.quantization.fake_quant import fake_quant, fake_quant_weight

    x = torch.tensor([-3.0, -0.26, 0.0, 0.24, 5.0])
    y = fake_quant(x, torch.tensor(0.02))
    assert y.tolist() == pytest.approx([-2.56, -0.26, 0.0, 0.24, 2.54])
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    wq = fake_quant_weight(w, torch.tensor([2.0 / 127, 0.5 / 127]), axis=0)
    assert wq.abs().amax(1).tolist() == pytest.approx([2.0, 0.5])


def test_grid_search_finds_grid_optimum_scalar_and_grouped():
    from tinysam_backend.quantization.calibrate import CalibrationConfig
    from tinysam_backend.quantization.scale_search import candidate_ratios, grid_search

    grid = candidate_ratios(CalibrationConfig())
    assert 1.0 in grid.tolist() and grid.min() == pytest.approx(0.01) and grid.max() == pytest.approx(1.2)
    target = torch.tensor([0.05, 0.537, 1.0, 1.19])
    best = grid_search(lambda a: (a - target).abs(), grid, groups=4)
    expected = grid[(grid[None, :] - target[:, None]).abs().argmin(1)]
    assert torch.equal(best, expected)
    assert float(grid_search(lambda a: (a - 0.3).square(), grid)) == pytest.approx(float(expected[0] * 0 + grid[
        (grid - 0.3).abs().argmin()]))


def _recorded_point(kind: str, module, n: int = 96):
    """A QuantPoint with n recorded samples of `module` as the recorder keeps them (patches / rows / pixels)."""
    import torch.nn.functional as F

    from tinysam_backend.quantization.points import QuantPoint

    g = torch.Generator().manual_seed(1)
    if kind == "conv":
        x = torch.randn(n, module.in_channels, *module.kernel_size, generator=g)
        o = module(x).flatten(1)
    elif kind == "conv_transpose":
        x = torch.randn(n, module.in_channels, 1, 1, generator=g)
        o = module(x)
    else:
        x = torch.randn(n, module.in_features, generator=g)
        o = F.linear(x, module.weight, module.bias)
    o = o.detach()
    pt = QuantPoint("p", kind, module, "encoder")
    pt.x, pt.o, pt.h = [x], [o], [torch.rand(o.shape, generator=g)]
    pt.x_max, pt.o_max = float(x.abs().max()), float(o.abs().max())
    return pt


@pytest.mark.parametrize("kind", ["linear", "conv", "depthwise", "conv_transpose"])
def test_search_layer_picks_the_grid_optimum_of_the_plain_float_error(kind):
    """One round with 7 candidates visits every candidate, so each scale must be the exhaustive optimum of the
    Hessian-weighted output error computed here in plain float (fake-quantized tensors, torch's own layer)."""
    import torch.nn.functional as F

    from tinysam_backend.quantization.calibrate import CalibrationConfig
    from tinysam_backend.quantization.fake_quant import fake_quant, fake_quant_weight
    from tinysam_backend.quantization.scale_search import candidate_ratios, search_layer

    torch.manual_seed(0)
    module = {"linear": torch.nn.Linear(24, 10), "conv": torch.nn.Conv2d(6, 8, 3),
              "depthwise": torch.nn.Conv2d(8, 8, 3, groups=8), "conv_transpose": torch.nn.ConvTranspose2d(6, 4, 2, 2)}[kind]
    pt = _recorded_point("linear" if kind == "linear" else "conv_transpose" if kind == "conv_transpose" else "conv",
                         module)
    x, o, h, w, b = pt.x[0], pt.o[0], pt.h[0], module.weight.detach(), module.bias.detach()
    axis = {"linear": None, "conv_transpose": 1}.get(kind, 0)

    def f(xq, wq):
        if kind == "linear":
            return F.linear(xq, wq, b)
        if kind == "conv_transpose":
            return F.conv_transpose2d(xq, wq, b, 2)
        return F.conv2d(xq, wq, b, groups=module.groups).flatten(1)

    cfg = CalibrationConfig(candidates=6, rounds=1)
    grid = candidate_ratios(cfg)
    assert len(grid) == 7
    scales, info = search_layer(pt, cfg)
    with torch.no_grad():
        w_max = w.abs().max() if axis is None else w.abs().transpose(0, axis).flatten(1).amax(1)
        wq0 = fake_quant_weight(w, w_max / 127, axis)
        errs = torch.stack([((f(fake_quant(x, a * pt.x_max / 127), wq0) - o).square() * h).sum() for a in grid])
        s_x = grid[int(errs.argmin())] * pt.x_max / 127
        assert scales.input == pytest.approx(float(s_x), rel=1e-6)
        xq = fake_quant(x, s_x)
        if axis is None:
            errs = torch.stack([((f(xq, fake_quant_weight(w, a * w_max / 127, None)) - o).square() * h).sum()
                                for a in grid])
            s_w = grid[int(errs.argmin())] * w_max / 127
        else:  # per output channel, independently
            dims = tuple(d for d in range(o.ndim) if d != 1)
            errs = torch.stack([((f(xq, fake_quant_weight(w, a * w_max / 127, axis)) - o).square() * h).sum(dims)
                                for a in grid])
            s_w = grid[errs.argmin(0)] * w_max / 127
        np.testing.assert_allclose(scales.weight, s_w.numpy(), rtol=1e-6)
        y = f(xq, fake_quant_weight(w, s_w, axis))
        final = y
        if kind != "linear":
            errs = torch.stack([((fake_quant(y, a * pt.o_max / 127) - o).square() * h).sum() for a in grid])
            s_o = grid[int(errs.argmin())] * pt.o_max / 127
            assert scales.output == pytest.approx(float(s_o), rel=1e-6)
            final = fake_quant(y, s_o)
        assert info["distortion"] == pytest.approx(float(((final - o).square() * h).sum()), rel=1e-4)
        assert info["distortion"] <= info["distortion_max_abs_scales"]


@pytest.mark.parametrize("bias", [True, False])
def test_search_attention_picks_the_grid_optimum_of_the_plain_float_error(bias):
    """q → k → p → v, one round, 7 candidates (all visited): each per-head scale is the exhaustive optimum of the
    weighted error of the product computed here in plain float, over two recorded calls."""
    from tinysam_backend.quantization.calibrate import CalibrationConfig
    from tinysam_backend.quantization.fake_quant import fake_quant
    from tinysam_backend.quantization.points import QuantPoint
    from tinysam_backend.quantization.scale_search import candidate_ratios, search_attention

    g = torch.Generator().manual_seed(2)
    heads, nq, nk, c, scale = 3, 5, 9, 4, 0.5
    pt = QuantPoint("a", "attention", torch.nn.Identity(), "encoder")
    for _ in range(2):  # two calibration calls
        q, k, v = (torch.randn(2, heads, n, c, generator=g) for n in (nq, nk, nk))
        b = torch.randn(heads, nq, nk, generator=g) if bias else None
        logits = q @ k.transpose(-2, -1) * scale + (0 if b is None else b)
        o = logits.softmax(-1) @ v
        pt.x.append((q, k, v))
        pt.extra.append((b, scale))
        pt.o.append(o)
        pt.h.append(torch.rand(o.shape, generator=g))
        for key, t in (("q", q), ("k", k), ("p", logits.softmax(-1)), ("v", v)):
            m = t.abs().amax(dim=(0, 2, 3))
            pt.head_max[key] = torch.maximum(pt.head_max.get(key, m), m)
    cfg = CalibrationConfig(candidates=6, rounds=1)
    grid = candidate_ratios(cfg)
    scales, info = search_attention(pt, cfg)
    grids = {"q": (-128, 127), "k": (-64, 63), "p": (0, 255), "v": (-64, 63)}
    s = {key: pt.head_max[key] / hi for key, (_, hi) in grids.items()}

    def error(sc) -> torch.Tensor:  # (heads,)
        def fq(t, key):
            return fake_quant(t, sc[key].view(1, -1, 1, 1), *grids[key])
        total = torch.zeros(heads)
        for (q, k, v), (b, _), o, h in zip(pt.x, pt.extra, pt.o, pt.h):
            logits = fq(q, "q") @ fq(k, "k").transpose(-2, -1) * scale + (0 if b is None else b)
            total += ((fq(logits.softmax(-1), "p") @ fq(v, "v") - o).square() * h).sum(dim=(0, 2, 3))
        return total

    for key in ("q", "k", "p", "v"):
        errs = torch.stack([error({**s, key: a * pt.head_max[key] / grids[key][1]}) for a in grid])  # (7, heads)
        s[key] = grid[errs.argmin(0)] * pt.head_max[key] / grids[key][1]
    found = {"q": scales.input, **scales.extra}
    for key, expected in s.items():
        np.testing.assert_allclose(found[key], expected.numpy(), rtol=1e-6, err_msg=key)
    assert info["distortion"] == pytest.approx(float(error(s).sum()), rel=1e-4)


@pytest.mark.parametrize(("k", "stride", "pad"), [(3, 2, 1), (3, 1, 1), (1, 1, 0), (3, 2, 0)])
def test_conv_patches_are_the_unfolded_input_windows(k, stride, pad):
    import torch.nn.functional as F

    from tinysam_backend.quantization.recorder import conv_patches

    x = torch.randn(2, 5, 11, 9, generator=torch.Generator().manual_seed(3))
    cols = F.unfold(x, k, padding=pad, stride=stride)  # (B, C·k·k, Ho·Wo)
    ho, wo = (11 + 2 * pad - k) // stride + 1, (9 + 2 * pad - k) // stride + 1
    bi, ii, jj = torch.tensor([0, 1, 1, 0]), torch.tensor([0, ho - 1, 2, ho // 2]), torch.tensor([wo - 1, 0, 1, 3])
    expected = cols[bi, :, ii * wo + jj].view(4, 5, k, k)
    assert torch.equal(conv_patches(x, bi, ii, jj, k, stride, pad), expected)


def test_attention_observer_sees_the_forward_products():
    """The observer gets the real intermediates (checked against PyTorch's own attention) and changes nothing."""
    import torch.nn.functional as F

    from tinysam_backend.modeling.image_encoder_tinyvit import WindowAttention
    from tinysam_backend.modeling.transformer import Attention

    torch.manual_seed(0)
    window = WindowAttention(32, 2, 7)
    torch.nn.init.normal_(window.attention_biases)
    x = torch.randn(3, 49, 32)
    cross = Attention(32, 4, downsample_rate=2)
    q_in, kv_in = torch.randn(2, 5, 32), torch.randn(2, 40, 32)
    with torch.no_grad():
        plain = window(x), cross(q_in, kv_in, kv_in)
        seen: list[dict] = []
        window.observer = cross.observer = lambda **t: seen.append(t)
        observed = window(x), cross(q_in, kv_in, kv_in)
        del window.observer, cross.observer
    assert torch.equal(plain[0], observed[0]) and torch.equal(plain[1], observed[1])
    assert [sorted(t) for t in seen] == [["bias", "k", "out", "probs", "q", "v"], ["k", "out", "probs", "q", "v"]]
    w, c = seen
    assert w["q"].shape == (3, 2, 49, 16) and w["bias"].shape == (2, 49, 49) and c["q"].shape == (2, 4, 5, 4)
    ref_w = F.scaled_dot_product_attention(w["q"], w["k"], w["v"], attn_mask=w["bias"])
    ref_c = F.scaled_dot_product_attention(c["q"], c["k"], c["v"])
    assert torch.allclose(w["out"], ref_w, atol=1e-5) and torch.allclose(c["out"], ref_c, atol=1e-5)
    assert torch.allclose(w["probs"].sum(-1), torch.ones(3, 2, 49)) and torch.allclose(c["probs"] @ c["v"], c["out"])
    assert window.observer is None and cross.observer is None


def test_recorder_fills_attention_points_and_removes_its_observers(tiny_model):
    from tinysam_backend.modeling.image_encoder_tinyvit import WindowAttention
    from tinysam_backend.modeling.transformer import Attention
    from tinysam_backend.quantization.calibrate import CalibrationConfig
    from tinysam_backend.quantization.points import QuantPoint
    from tinysam_backend.quantization.recorder import ActivationRecorder

    mods = [m for m in tiny_model.modules() if isinstance(m, (WindowAttention, Attention))]
    points = [QuantPoint(f"attn{i}", "attention", m, "encoder") for i, m in enumerate(mods)]
    s = tiny_model.image_size
    with torch.no_grad(), ActivationRecorder(points, CalibrationConfig()):
        emb = tiny_model.encode_image(torch.randn(1, 3, s, s))
        tiny_model.decode(emb, (torch.tensor([[[30.0, 40.0]]]), torch.ones(1, 1, dtype=torch.int64)))
    for pt in points:
        assert len(pt.x) == 1 and set(pt.head_max) == {"q", "k", "p", "v"}, pt.name
        assert pt.head_max["q"].shape == (pt.module.num_heads,) and float(pt.head_max["p"].max()) <= 1.0
    assert all(m.observer is None and "observer" not in vars(m) for m in mods)


def test_load_quantized_refuses_directory_without_metadata(tmp_path):
    from tinysam_backend.quantization.runtime import load_quantized

    with pytest.raises(CheckpointError, match="quantization.json"):
        load_quantized(tmp_path)


# ----------------------------------------------------------------------------- fp32 ONNX export parity
@pytest.fixture(scope="module")
def onnx_fp32_dir(parity_checkpoint, tmp_path_factory) -> Path:
    from tinysam_backend.checkpoint import load_torch_model
    from tinysam_backend.quantization.export import export_onnx

    out = tmp_path_factory.mktemp("onnx_fp32")
    export_onnx(load_torch_model(parity_checkpoint), out)
    return out


def test_onnx_fp32_export_matches_parity_fixtures(onnx_fp32_dir, parity_dir, parity_manifest, parity_images):
    from tinysam_backend import Predictor
    from tinysam_backend.quantization.runtime import OnnxSam, load_quantized

    model = load_quantized(onnx_fp32_dir, decoder="onnx")  # both ONNX graphs
    assert isinstance(model, OnnxSam) and model.precision == "fp32"
    predictor = Predictor(model)
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


def test_onnx_decoder_handles_prompt_batches_and_mask_only(onnx_fp32_dir, parity_model):
    from tinysam_backend import Predictor
    from tinysam_backend.quantization.runtime import load_quantized

    fp32, onnx_model = Predictor(parity_model), Predictor(load_quantized(onnx_fp32_dir, decoder="onnx"))
    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    e1, e2 = fp32.embed(rgb), onnx_model.embed(rgb)
    boxes = np.array([[5, 5, 60, 40], [10, 20, 120, 90]], np.float64)
    pts, labs = np.array([[[30, 30]], [[64, 50]]], np.float64), np.array([[1], [0]])
    for kw in ({"boxes": boxes}, {"point_coords": pts, "point_labels": labs},
               {"point_coords": pts, "point_labels": labs, "boxes": boxes},
               {"mask_input": np.random.default_rng(1).normal(size=(2, 1, 256, 256)).astype(np.float32)}):
        _, s1, l1 = fp32.predict_batch(e1, return_masks=False, **kw)
        _, s2, l2 = onnx_model.predict_batch(e2, return_masks=False, **kw)
        assert s2.shape == s1.shape == (2, 3)
        assert np.abs(s1 - s2).max() <= 1e-3 and np.abs(l1 - l2).max() <= 5e-3 * max(1.0, np.abs(l1).max())


# ----------------------------------------------------------------------------- calibration → int8 artifact
@pytest.fixture(scope="module")
def int8_dir(parity_checkpoint, tmp_path_factory) -> Path:
    import skimage.data

    from tinysam_backend.checkpoint import load_torch_model
    from tinysam_backend.image_io import array_to_rgb
    from tinysam_backend.quantization.artifact import quantize_model
    from tinysam_backend.quantization.calibrate import CalibrationConfig

    out = tmp_path_factory.mktemp("int8")
    images = [array_to_rgb(skimage.data.camera()), array_to_rgb(skimage.data.coins())]
    cfg = CalibrationConfig(candidates=6, rounds=1, rows_per_image=64, windows_per_call=4, prompts_per_image=2)
    quantize_model(load_torch_model(parity_checkpoint), images, out, cfg, ["camera", "coins"])
    return out


def test_int8_artifact_is_data_only_and_really_int8(int8_dir):
    import onnx
    from safetensors.torch import load_file

    files = sorted(p.name for p in int8_dir.iterdir())
    assert files == ["image_encoder.onnx", "image_encoder.openvino.onnx", "mask_decoder.onnx",
                     "prompt_decoder.fp32.safetensors", "quantization.json"]
    meta = json.loads((int8_dir / "quantization.json").read_text())
    assert meta["precision"] == "int8" and meta["calibration"]["images"] == ["camera", "coins"]
    fp32_side = load_file(str(int8_dir / meta["fp32_decoder"]))  # safetensors: tensors only, nothing executed
    assert fp32_side and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in fp32_side)
    for name in ("image_encoder.onnx", "mask_decoder.onnx"):
        graph = onnx.load(str(int8_dir / name)).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"} <= ops, name
        int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
        assert len(int8_weights) >= 10, name


def test_int8_graph_runs_int8_kernels(int8_dir, tmp_path):
    import onnx

    from tinysam_backend.quantization.runtime import create_session, session_options

    so = session_options()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    create_session(int8_dir / "image_encoder.onnx", so)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") >= 10 and ops.count("MatMulIntegerToFloat") >= 20 and "MatMulInteger" in ops


@pytest.mark.parametrize("decoder", ["onnx", "fp32"])
def test_int8_masks_close_to_fp32(int8_dir, parity_predictor, parity_images, parity_dir, decoder):
    from tinysam_backend import Predictor
    from tinysam_backend.quantization.runtime import load_quantized

    q = Predictor(load_quantized(int8_dir, decoder=decoder))
    ious, score_err = [], []
    for name, rgb in parity_images.items():
        e_fp, e_q = parity_predictor.embed(rgb), q.embed(rgb)
        for case in ("point", "box"):
            z = np.load(parity_dir / f"{name}_{case}.npz")
            m1, s1, _ = parity_predictor.predict(e_fp, **_case_prompts(z))
            m2, s2, _ = q.predict(e_q, **_case_prompts(z))
            best = int(np.argmax(s1))
            ious.append(_mask_iou(m1[best], m2[best]))
            score_err.append(float(np.abs(s1 - s2).max()))
    # A fast calibration (2 images, 6 candidates, 1 round) on random weights: a proxy, looser than the
    # benchmark's target; the full recipe is measured by benchmarks/quantization_bench.py.
    assert np.mean(ious) >= 0.8, ious
    assert max(score_err) <= 0.1, score_err


def test_int8_artifact_serves_int8_encoder_with_exact_fp32_decoder_by_default(int8_dir, parity_model, parity_dir,
                                                                              tmp_path):
    import shutil

    import torch

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.config import Settings
    from tinysam_backend.quantization.runtime import HybridSam, OnnxSam, load_quantized

    model = load_model(int8_dir, settings=Settings())
    assert isinstance(model, HybridSam) and model.precision == "int8"
    assert Predictor(model).low_rank_decoder  # clicks go through the low-rank decoder
    features = torch.from_numpy(np.load(parity_dir / "coffee_embedding.npy"))
    prompts = (torch.tensor([[[300.0, 200.0], [500.0, 400.0]]]), torch.tensor([[1, 0]]))
    with torch.inference_mode():
        low, iou = model.decode(features, prompts)
        ref_low, ref_iou = parity_model.decode(features, prompts)
    assert torch.equal(iou, ref_iou) and torch.equal(low, ref_low)  # the same fp32 weights, the same arithmetic
    assert isinstance(load_model(int8_dir, settings=Settings(quantized_decoder="onnx")), OnnxSam)
    # An artifact without the fp32 weights (older `tinysam quantize`) is refused, whatever serves it, with the fix.
    old = tmp_path / "old"
    shutil.copytree(int8_dir, old)
    (old / "prompt_decoder.fp32.safetensors").unlink()
    meta = json.loads((old / "quantization.json").read_text())
    del meta["fp32_decoder"]
    (old / "quantization.json").write_text(json.dumps(meta))
    for choice in ("auto", "fp32", "onnx"):
        with pytest.raises(CheckpointError, match="older `tinysam quantize`.*re-run `tinysam quantize`"):
            load_quantized(old, decoder=choice)
    with pytest.raises(CheckpointError, match="re-run `tinysam quantize`"):
        load_model(old, settings=Settings())
    with pytest.raises(ValueError, match="decoder must be one of"):
        load_quantized(int8_dir, decoder="int4")


def test_torch_only_callers_refuse_an_artifact_directory(int8_dir):
    from tinysam_backend.checkpoint import load_torch_model

    with pytest.raises(CheckpointError, match="quantized ONNX artifact"):
        load_torch_model(int8_dir)
    cli = subprocess.run([sys.executable, "-m", "tinysam_backend.cli", "export-onnx", "--checkpoint", str(int8_dir),
                          "--out", str(int8_dir / "again")], capture_output=True, text=True, check=False)
    assert cli.returncode != 0 and "quantized ONNX artifact" in cli.stderr
    assert not (int8_dir / "again").exists()


def test_openvino_runs_the_int8_artifact_as_int8(int8_dir, parity_predictor, parity_images, parity_dir, tmp_path):
    """Our scales with Q/DQ placed for OpenVINO: every convolution, linear layer and attention product runs in int8
    (runtime precision per layer), and the masks stay close to fp32 (same loose bound as the ONNX Runtime graph)."""
    pytest.importorskip("openvino")
    from tinysam_backend import Predictor, load_model
    from tinysam_backend.config import Settings
    from tinysam_backend.engines.openvino_engine import OpenVINOImageEncoder, runtime_precisions
    from tinysam_backend.quantization.runtime import HybridSam

    model = load_model(int8_dir, settings=Settings(cache_dir=tmp_path), engine="openvino")
    assert isinstance(model, HybridSam) and isinstance(model.image_encoder, OpenVINOImageEncoder)
    assert model.engine_info["precision"] == "int8" and model.engine_info["graph"].endswith("openvino.onnx")
    counts = runtime_precisions(model.image_encoder.compiled)
    int8 = {k: v for k, v in counts.items() if k[1] in ("i8", "u8")}
    assert not {k: v for k, v in counts.items() if k[1] not in ("i8", "u8")}, counts
    assert sum(v for (layer, _), v in int8.items() if layer.startswith("FullyConnected")) >= 20, counts
    # The 10 window attentions' products: int8 MatMul layers, or (OpenVINO's fused attention kernel on AVX-512)
    # an int8 subgraph that holds the attention's MatMuls, softmax and requantization.
    attention_int8 = []
    for op in model.image_encoder.compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        fused = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        if "/attn/MatMul" in fused and precision in ("i8", "u8"):
            attention_int8.append(fused)
    assert len({name.split("/attn/")[0] for f in attention_int8 for name in f.split(",") if "/attn/MatMul" in name}) \
        == 10, attention_int8
    q = Predictor(model)
    ious = []
    for name, rgb in parity_images.items():
        e_fp, e_q = parity_predictor.embed(rgb), q.embed(rgb)
        for case in ("point", "box"):
            z = np.load(parity_dir / f"{name}_{case}.npz")
            m1, s1, _ = parity_predictor.predict(e_fp, **_case_prompts(z))
            m2, _, _ = q.predict(e_q, **_case_prompts(z))
            best = int(np.argmax(s1))
            ious.append(_mask_iou(m1[best], m2[best]))
    assert np.mean(ious) >= 0.8, ious
