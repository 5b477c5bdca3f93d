"""The low-rank decoder equals `Sam.decode` for every prompt kind, and the predictor uses it when it can."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tinysam_backend import Predictor
from tinysam_backend.modeling.lowrank_decoder import ImageContext, LowRankDecoder, unsupported_reason


def _prompt_kinds(size: float, batch: int, seed: int) -> dict:
    """Input-frame prompts of every kind the predictor accepts with points or a box (mask_input: logits)."""
    g = torch.Generator().manual_seed(seed)
    one = (torch.rand(batch, 1, 2, generator=g) * size, torch.ones(batch, 1, dtype=torch.int64))
    three = (torch.rand(batch, 3, 2, generator=g) * size, torch.tensor([[1, 0, 1]] * batch))
    corner = torch.rand(batch, 2, generator=g) * size / 2
    box = torch.cat([corner, corner + size / 3], dim=1)
    mask = torch.randn(batch, 1, 256, 256, generator=g) * 4
    return {
        "point": {"points": one},
        "points_pos_neg": {"points": three},
        "box": {"boxes": box},
        "box_and_points": {"points": three, "boxes": box},
        "points_and_mask": {"points": three, "mask_input": mask},
        "box_and_mask": {"boxes": box, "mask_input": mask},
    }


def _assert_same_as_model(model, features: torch.Tensor, prompt: dict) -> None:
    with torch.inference_mode():
        low, iou = LowRankDecoder(model, features).decode(**prompt)
        ref_low, ref_iou = model.decode(features, prompt.get("points"), prompt.get("boxes"), prompt.get("mask_input"))
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(low, ref_low, atol=1e-4 * max(1.0, ref_low.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("kind", list(_prompt_kinds(64.0, 1, 0)))
def test_equals_model_decode_tiny(tiny_model, kind):
    torch.manual_seed(3)
    features = torch.randn(1, tiny_model.mask_decoder.transformer_dim, 16, 16)
    prompt = _prompt_kinds(float(tiny_model.image_size), 3, 1)[kind]
    if "mask_input" in prompt:  # the tiny model's mask branch takes 4× its 16 × 16 grid
        prompt["mask_input"] = prompt["mask_input"][..., :64, :64].contiguous()
    _assert_same_as_model(tiny_model, features, prompt)


@pytest.mark.parametrize("kind", list(_prompt_kinds(1024.0, 1, 0)))
def test_equals_model_decode_parity_checkpoint(parity_model, parity_dir, kind):
    features = torch.from_numpy(np.load(parity_dir / "astronaut_embedding.npy"))
    _assert_same_as_model(parity_model, features, _prompt_kinds(1024.0, 2, 2)[kind])


@pytest.mark.parametrize("kind", ["point", "box_and_mask"])
def test_best_only_is_the_highest_iou_mask(parity_model, parity_dir, kind):
    features = torch.from_numpy(np.load(parity_dir / "astronaut_embedding.npy"))
    prompt = _prompt_kinds(1024.0, 12, 5)[kind]
    model = copy.deepcopy(parity_model)
    decoder = LowRankDecoder(model, features)
    _, iou = decoder.decode(**prompt)
    # Random weights favour one mask for every prompt; centring the IoU head's outputs makes the best one vary.
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.layers[-1].bias[1:] -= iou.mean(dim=0) - iou.mean()
    low, iou = decoder.decode(**prompt)
    best_low, best_iou = decoder.decode(**prompt, best_only=True)
    best = iou.argmax(dim=1)
    assert len(best.unique()) > 1, "the prompts should not all pick the same mask"
    assert best_low.shape == (12, 1, 256, 256)
    torch.testing.assert_close(best_iou, iou)
    torch.testing.assert_close(best_low[:, 0], low[torch.arange(12), best], atol=1e-4 * low.abs().max().item(),
                               rtol=1e-4)


def test_predictor_best_only_with_and_without_the_context(tiny_model):
    image = np.random.default_rng(4).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    coords, labels = np.array([[[10.0, 20.0]], [[40.0, 60.0]], [[25.0, 5.0]]]), np.ones((3, 1))
    for predictor in (Predictor(tiny_model), Predictor(tiny_model, low_rank_decoder=False)):
        emb = predictor.embed(image)
        masks, scores, low = predictor.predict_batch(emb, coords, labels)
        best_masks, best_scores, best_low = predictor.predict_batch(emb, coords, labels, best_only=True)
        pick = scores.argmax(axis=1)
        np.testing.assert_array_equal(best_scores, scores)
        assert best_masks.shape == (3, 1, 70, 50) and best_low.shape == (3, 1, 64, 64)
        np.testing.assert_allclose(best_low[:, 0], low[np.arange(3), pick], atol=1e-4 * np.abs(low).max())
        assert (best_masks[:, 0] != masks[np.arange(3), pick]).mean() < 1e-3


def test_predictor_decodes_through_the_context_and_matches_model_decode(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    fast, plain = Predictor(tiny_model), Predictor(tiny_model, low_rank_decoder=False)
    emb_fast, emb_plain = fast.embed(image), plain.embed(image)
    assert isinstance(emb_fast.context, ImageContext) and emb_plain.context is None
    assert emb_fast.nbytes == emb_plain.nbytes + emb_fast.context.nbytes > emb_plain.nbytes
    kwargs = {"point_coords": [[30.0, 40.0], [100.0, 10.0]], "point_labels": [1, 0], "box": [10, 5, 90, 70]}
    m1, s1, low1 = fast.predict(emb_fast, **kwargs)
    m2, s2, low2 = plain.predict(emb_plain, **kwargs)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_allclose(low1, low2, atol=1e-4 * max(1.0, np.abs(low2).max()))
    assert (m1 != m2).mean() < 1e-3
    # Refining with the previous logits goes through the low-rank path too; a mask alone through `model.decode`.
    r1 = fast.predict(emb_fast, point_coords=[[30.0, 40.0]], point_labels=[1], mask_input=low1[:1])
    r2 = plain.predict(emb_plain, point_coords=[[30.0, 40.0]], point_labels=[1], mask_input=low2[:1])
    np.testing.assert_allclose(r1[1], r2[1], atol=1e-5)
    only_mask = fast.predict(emb_fast, mask_input=low1[:1])
    np.testing.assert_allclose(only_mask[1], plain.predict(emb_plain, mask_input=low2[:1])[1], atol=1e-5)


def test_unsupported_models_are_named_and_fall_back(tiny_model):
    class Wrapped:
        image_size = tiny_model.image_size

        def __getattr__(self, name):
            return getattr(tiny_model, name)

    assert "not a Sam" in unsupported_reason(Wrapped())
    assert Predictor(Wrapped()).low_rank_decoder is False
    half = copy.deepcopy(tiny_model).half()
    assert "float16" in unsupported_reason(half)
    with pytest.raises(ValueError, match="point or box"):
        LowRankDecoder(tiny_model, torch.randn(1, tiny_model.mask_decoder.transformer_dim, 16, 16)).decode(mask_input=torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_mask_heads_of_the_first_token_rows_equal_those_rows_of_the_whole_grid(parity_model, batch):
    """`masks(..., rows=)` (the everything mode skips the padding rows its crop never reads) computes the
    blocks that cover those rows exactly as for the whole grid: the same logits, bit for bit."""
    torch.manual_seed(batch)
    dec = LowRankDecoder(parity_model, torch.randn(1, 256, 64, 64))
    coords = torch.rand(batch, 1, 2, dtype=torch.float64) * 1000
    labels = torch.ones(batch, 1, dtype=torch.int64)
    with torch.inference_mode():
        sparse, _ = parity_model.prompt_encoder((coords, labels), None, None)
        queries, point_embedding, tok = dec.layers(sparse)
        hs = dec.final(queries[:, 2:5], point_embedding[:, 2:5], tok)
        hyper = dec.hypernetworks(hs)
        whole = dec.masks(hyper, tok)
        for rows in (43, 1, 64):
            cut = dec.masks(hyper, tok, rows=4 * rows - 1)  # 4 low-res rows per token row: `rows` token rows
            assert cut.shape == (batch, 3, 4 * rows, 256)
            assert torch.equal(cut, whole[:, :, : 4 * rows])
