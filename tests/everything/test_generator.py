"""Segment-everything on a tiny random model: the fast decoder equals `model.decode`, and the algorithm's rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tinysam_backend import Predictor
from tinysam_backend.everything import EverythingParams, run_everything, segment_everything
from tinysam_backend.everything.decoders import LowRankPointDecoder, ModelPointDecoder, make_point_decoder
from tinysam_backend.masks import decode_rle
from tinysam_backend.modeling.lowrank_decoder import LowRankDecoder, unsupported_reason

# Thresholds that let random weights keep masks (their IoU predictions and logits are small).
PERMISSIVE = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "high_score_thresh": 0.5, "box_nms_thresh": 0.7}


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model):
    return Predictor(tiny_model)


@pytest.fixture(scope="module")
def tiny_image():
    rng = np.random.default_rng(0)
    img = np.zeros((90, 120, 3), dtype=np.uint8)
    img[20:60, 30:90] = (200, 40, 40)
    return (img + rng.integers(0, 30, img.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_embedding(tiny_predictor, tiny_image):
    return tiny_predictor.embed(tiny_image)


def _input_points(rng, n, size):
    return rng.random((n, 2)) * np.array(size)[::-1]


def test_fast_decoder_equals_model_decode_tiny(tiny_model, tiny_embedding):
    rng = np.random.default_rng(1)
    pts = _input_points(rng, 7, tiny_embedding.input_size)
    prompts = (torch.from_numpy(pts).reshape(-1, 1, 2), torch.ones(7, 1, dtype=torch.int64))
    with torch.inference_mode():
        low, iou = LowRankDecoder(tiny_model, tiny_embedding.features).decode(prompts)
        ref_low, ref_iou = tiny_model.decode(tiny_embedding.features, prompts)
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(low, ref_low, atol=1e-4 * max(1.0, ref_low.abs().max().item()), rtol=1e-4)


def test_fast_decoder_equals_model_decode_parity_model(parity_model, parity_dir):
    features = torch.from_numpy(np.load(parity_dir / "coffee_embedding.npy"))
    pts = _input_points(np.random.default_rng(2), 5, (683, 1024))
    with torch.inference_mode():
        decoded = LowRankPointDecoder(parity_model, features)(pts)
        ref_low, ref_iou = parity_model.decode(
            features, (torch.from_numpy(pts).reshape(-1, 1, 2), torch.ones(5, 1, dtype=torch.int64)))
        # Only some masks asked for: the heads run for those prompts only, and give the same logits.
        flat = np.array([14, 1, 2, 9])
        part = decoded.low_res(flat)
    np.testing.assert_allclose(decoded.iou, ref_iou.numpy(), atol=1e-4)
    ref = ref_low.reshape(-1, *ref_low.shape[-2:])[torch.as_tensor(flat)]
    assert (part - ref).abs().max().item() <= 1e-3 * max(1.0, ref.abs().max().item())


def test_decoder_choice(tiny_model, tiny_embedding):
    assert unsupported_reason(tiny_model) is None
    assert isinstance(make_point_decoder(tiny_model, tiny_embedding.features, "auto"), LowRankPointDecoder)
    assert isinstance(make_point_decoder(tiny_model, tiny_embedding.features, "model"), ModelPointDecoder)

    class Wrapped:  # anything with the model protocol but not a Sam, e.g. a quantized model
        image_size = tiny_model.image_size

        def decode(self, *a):
            return tiny_model.decode(*a)

    assert unsupported_reason(Wrapped()) is not None
    assert isinstance(make_point_decoder(Wrapped(), tiny_embedding.features, "auto"), ModelPointDecoder)
    with pytest.raises(ValueError, match="fp32 Sam"):
        make_point_decoder(Wrapped(), tiny_embedding.features, "fast")


def _assert_same_records(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["point_coords"] == y["point_coords"]
        assert abs(x["predicted_iou"] - y["predicted_iou"]) < 1e-4
        ma, mb = decode_rle(x["segmentation"]), decode_rle(y["segmentation"])
        assert (ma != mb).mean() < 1e-3


@pytest.mark.parametrize("mode", ["hierarchical", "dense"])
def test_fast_and_model_decoders_give_the_same_records(tiny_predictor, tiny_embedding, mode):
    kw = dict(PERMISSIVE, mode=mode, points_per_side=8, points_per_batch=5)
    fast = segment_everything(tiny_predictor, tiny_embedding, decoder="fast", **kw)
    plain = segment_everything(tiny_predictor, tiny_embedding, decoder="model", **kw)
    assert len(fast) > 0
    _assert_same_records(fast, plain)


def test_records_format(tiny_predictor, tiny_image):
    progress = []
    records = segment_everything(tiny_predictor, tiny_image, points_per_side=8,
                                 progress=lambda done, total: progress.append((done, total)), **PERMISSIVE)
    h, w = tiny_image.shape[:2]
    assert records and progress and progress[-1][0] == progress[-1][1]
    ious = [r["predicted_iou"] for r in records]
    assert ious == sorted(ious, reverse=True)
    for r in records:
        assert set(r) == {"segmentation", "bbox", "area", "predicted_iou", "stability_score", "point_coords"}
        assert r["segmentation"]["size"] == [h, w] and isinstance(r["segmentation"]["counts"], str)
        mask = decode_rle(r["segmentation"])
        assert r["area"] == int(mask.sum())
        if r["area"]:
            ys, xs = np.nonzero(mask)
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert len(r["point_coords"]) == 1 and 0 <= r["point_coords"][0][0] < w and 0 <= r["point_coords"][0][1] < h


def test_no_second_round_candidates_returns_first_round(tiny_predictor, tiny_embedding):
    """A high-confidence map covering the image leaves no second-round points (the official code crashes)."""
    kw = dict(PERMISSIVE, high_score_thresh=-1e9, points_per_side=8)
    result = run_everything(tiny_predictor, tiny_embedding, EverythingParams(mode="hierarchical", **kw))
    assert result.prompts_per_round == [4, 0]
    dense_first_grid = run_everything(tiny_predictor, tiny_embedding,
                                      EverythingParams(mode="dense", **dict(kw, points_per_side=2)))
    assert len(result.records) > 0
    _assert_same_records(result.records, dense_first_grid.records)


def test_high_confidence_map_prunes_second_round(tiny_predictor, tiny_embedding):
    none_high = run_everything(tiny_predictor, tiny_embedding,
                               EverythingParams(points_per_side=8, **dict(PERMISSIVE, high_score_thresh=1e9)))
    assert none_high.prompts_per_round[1] > 0
    # 1.0, the top of the range: random weights predict IoUs far below it, so the first round keeps nothing
    nothing_kept = run_everything(tiny_predictor, tiny_embedding,
                                  EverythingParams(points_per_side=8, pred_iou_thresh=1.0))
    assert nothing_kept.records == [] and nothing_kept.prompts_per_round == none_high.prompts_per_round


def test_min_mask_region_area_runs(tiny_predictor, tiny_embedding):
    records = segment_everything(tiny_predictor, tiny_embedding, points_per_side=8, min_mask_region_area=50,
                                 **PERMISSIVE)
    for r in records:
        assert r["area"] == int(decode_rle(r["segmentation"]).sum())


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "grid"}, "mode"), ({"points_per_side": 3}, "points_per_side"),
    ({"mode": "dense", "points_per_side": 0}, "points_per_side"), ({"points_per_batch": 0}, "points_per_batch"),
    ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh"), ({"box_nms_thresh": 1.5}, "box_nms_thresh"),
    ({"min_mask_region_area": -1}, "min_mask_region_area"), ({"decoder": "gpu"}, "decoder"),
    ({"pred_iou_thresh": 1.5}, r"pred_iou_thresh must be in \[-inf, 1.0\], got 1.5"),
    ({"stability_score_thresh": 2}, "stability_score_thresh"), ({"points_per_batch": 2.0}, "points_per_batch"),
    ({"high_score_thresh": True}, "high_score_thresh"),
])
def test_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EverythingParams(**kwargs)
    with pytest.raises(ValueError, match=match):  # the library's keywords go through the same checks
        segment_everything(None, None, **kwargs)


def test_params_overrides_and_parameters():
    assert EverythingParams.from_overrides() == EverythingParams()
    assert EverythingParams.from_overrides(mode="dense", points_per_side=2).points_per_side == 2
    with pytest.raises(ValueError, match=r"unknown segment-everything parameters \['points_per_sid'\]"):
        EverythingParams.from_overrides(points_per_sid=8)
    params = {p.name: p for p in EverythingParams.parameters()}
    assert list(params) == [f.name for f in dataclasses.fields(EverythingParams)]
    assert params["points_per_side"].flag == "--points-per-side" and params["points_per_side"].parse(" 12 ") == 12
    assert params["mode"].parse("Dense") == "dense" and params["mode"].choices == ("hierarchical", "dense")
    assert params["pred_iou_thresh"].high == 1.0 and params["pred_iou_thresh"].parse("0.5") == 0.5
    with pytest.raises(ValueError, match="points_per_side must be an integer, got '1.5'"):
        params["points_per_side"].parse("1.5")


def test_batches_in_worker_threads_give_the_same_records_and_stop_on_cancel(tiny_predictor, tiny_embedding,
                                                                             monkeypatch):
    import threading

    from tinysam_backend.everything import generator

    kw = dict(PERMISSIVE, mode="dense", points_per_side=8, points_per_batch=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(generator, "MAX_BATCH_WORKERS", 1)
        one = run_everything(tiny_predictor, tiny_embedding, EverythingParams(**kw))
        monkeypatch.setattr(generator, "MAX_BATCH_WORKERS", 2)
        seen = []
        two = run_everything(tiny_predictor, tiny_embedding, EverythingParams(**kw),
                             progress=lambda done, total: seen.append(done))
        assert len(one.records) > 0
        _assert_same_records(two.records, one.records)
        assert seen == sorted(seen) and seen[-1] == 64  # in batch order, every prompt once

        class Cancelled(Exception):
            pass

        def cancel(done, total):
            raise Cancelled

        before = threading.active_count()
        with pytest.raises(Cancelled):
            run_everything(tiny_predictor, tiny_embedding, EverythingParams(**kw), progress=cancel)
        assert threading.active_count() == before  # the worker threads are gone, queued batches dropped
    finally:
        torch.set_num_threads(threads)
