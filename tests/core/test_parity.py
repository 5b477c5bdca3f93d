"""Parity with the official TinySAM implementation (fixtures in ../shared/parity)."""

from __future__ import annotations

import numpy as np
import pytest

CASES = ["point", "points_pos_neg", "box", "box_point", "refine_with_mask_input"]
IMAGES = ["astronaut", "coffee"]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("name", IMAGES)
def test_embedding_matches_official(name, parity_dir, parity_embeddings):
    ref = np.load(parity_dir / f"{name}_embedding.npy")
    ours = parity_embeddings[name].features.numpy()
    assert ours.shape == ref.shape == (1, 256, 64, 64)
    assert np.abs(ours - ref).max() <= 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("case", CASES)
def test_prompt_outputs_match_official(name, case, parity_dir, parity_predictor, parity_embeddings, parity_manifest):
    ref = np.load(parity_dir / f"{name}_{case}.npz")
    kwargs = {}
    if "prompt_point_coords" in ref:
        kwargs.update(point_coords=ref["prompt_point_coords"], point_labels=ref["prompt_point_labels"])
    if "prompt_box" in ref:
        kwargs["box"] = ref["prompt_box"]
    if "prompt_mask_input" in ref:
        kwargs["mask_input"] = ref["prompt_mask_input"]
    masks, scores, low_res = parity_predictor.predict(parity_embeddings[name], **kwargs)
    h, w = parity_manifest["images"][name]["shape"]
    assert masks.shape == (3, h, w) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 256, 256)
    assert np.abs(scores - ref["iou_predictions"]).max() <= 1e-3
    ref_logits = ref["low_res_logits"]
    assert np.abs(low_res - ref_logits).max() <= 5e-3 * max(1.0, float(np.abs(ref_logits).max()))
    for i in range(3):
        assert _mask_iou(masks[i], ref["masks"][i]) >= 0.99, f"mask {i}"


def test_batched_prompts_equal_single_calls(parity_dir, parity_predictor, parity_embeddings):
    emb = parity_embeddings["coffee"]
    refs = [np.load(parity_dir / f"coffee_{c}.npz") for c in ("point", "box_point")]
    coords = np.stack([r["prompt_point_coords"][:1] for r in refs])
    labels = np.stack([r["prompt_point_labels"][:1] for r in refs])
    masks, scores, low = parity_predictor.predict_batch(emb, coords, labels)
    for i in range(2):
        m1, s1, l1 = parity_predictor.predict(emb, coords[i], labels[i])
        np.testing.assert_allclose(scores[i], s1, atol=1e-5)
        np.testing.assert_allclose(low[i], l1, atol=1e-3)
        assert (masks[i] != m1).mean() < 1e-4
