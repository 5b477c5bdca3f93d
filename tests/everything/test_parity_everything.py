"""Hierarchical everything reproduces the official implementation's fixtures (../shared/parity)."""

from __future__ import annotations

import ast
import json

import numpy as np
import pytest
import torch

from tinysam_backend.everything import EverythingParams, run_everything
from tinysam_backend.masks import decode_rle

IMAGES = ["astronaut", "coffee"]
FIXTURES = ["everything_hierarchical", "everything_hierarchical_nonms"]


def _fixture_embedding(parity_dir, parity_manifest, name):
    from tinysam_backend.predictor import ImageEmbedding
    from tinysam_backend.transforms import resized_shape

    h, w = parity_manifest["images"][name]["shape"]
    features = torch.from_numpy(np.load(parity_dir / f"{name}_embedding.npy"))
    return ImageEmbedding(features, (h, w), resized_shape(h, w, 1024))


def _rle(value):
    rle = ast.literal_eval(value) if isinstance(value, str) else value
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def match_annotations(ours: list[dict], reference: list[dict]) -> None:
    """The fixture README's rule: same count; match by point_coords, then predicted IoU (1e-3) and area (0.5 %);
    mask IoU >= 0.99 where the reference carries its RLE."""
    assert len(ours) == len(reference), f"{len(ours)} masks, the official run has {len(reference)}"
    unused = list(range(len(ours)))
    for ref in reference:
        point = np.asarray(ref["point_coords"], dtype=np.float64).reshape(2)
        candidates = [i for i in unused
                      if np.allclose(np.asarray(ours[i]["point_coords"]).reshape(2), point, atol=1e-6)
                      and abs(ours[i]["predicted_iou"] - ref["predicted_iou"]) <= 1e-3
                      and abs(ours[i]["area"] - ref["area"]) <= 0.005 * max(ref["area"], 1)]
        assert candidates, f"no mask of ours matches the official one at {point.tolist()} " \
                           f"(iou {ref['predicted_iou']:.4f}, area {ref['area']})"
        best = min(candidates, key=lambda i: abs(ours[i]["predicted_iou"] - ref["predicted_iou"]))
        unused.remove(best)
        if ref.get("rle_coco"):
            iou = _iou(decode_rle(ours[best]["segmentation"]), decode_rle(_rle(ref["rle_coco"])))
            assert iou >= 0.99, f"mask at {point.tolist()}: IoU {iou:.4f} with the official mask"


def _params(reference: dict, decoder: str) -> EverythingParams:
    p = reference["params"]
    return EverythingParams(mode="hierarchical", points_per_side=p["points_per_side"],
                            pred_iou_thresh=p["pred_iou_thresh"], stability_score_thresh=p["stability_score_thresh"],
                            high_score_thresh=p["high_score_thresh"], box_nms_thresh=p["box_nms_thresh"],
                            decoder=decoder)


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("name", IMAGES)
def test_hierarchical_everything_matches_official(name, fixture, parity_dir, parity_manifest, parity_predictor):
    reference = json.loads((parity_dir / f"{name}_{fixture}.json").read_text())
    emb = _fixture_embedding(parity_dir, parity_manifest, name)
    result = run_everything(parity_predictor, emb, _params(reference, "fast"))
    assert result.timings["decoder"] == "LowRankDecoder"
    match_annotations(result.records, reference["annotations"])
