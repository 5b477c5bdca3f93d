"""`tinysam eval-coco` (zero-shot instance segmentation, mask AP by pycocotools) with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinysam_backend.coco_eval import load_detections, mask_ap, segment_detections, xywh_to_xyxy
from tinysam_backend.errors import TinySAMError
from tinysam_backend.masks import decode_rle, encode_rle

COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _expected_ap(ious):
    """One GT and one prediction per category: AP at threshold t is 1 if IoU >= t else 0."""
    return float(np.mean([np.mean([iou >= t for t in COCO_THRESHOLDS]) for iou in ious]))


def _coco(images, annotations, n_categories):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_categories + 1)]}
    coco.createIndex()
    return coco


def _gt_annotation(ann_id, image_id, category_id, mask):
    from pycocotools import mask as mask_utils

    rle = encode_rle(np.asarray(mask)[None])[0]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": float(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(
                {"size": rle["size"], "counts": rle["counts"].encode()})], "iscrowd": 0}


def _shift(mask, dx):
    out = np.zeros_like(mask)
    out[:, dx:] = mask[:, :mask.shape[1] - dx] if dx else mask
    return out


def test_mask_ap_of_shifted_squares_is_the_counted_thresholds():
    h = w = 64
    shifts = [0, 2, 4, 6]
    images = [{"id": i + 1, "width": w, "height": h, "file_name": f"{i}.png"} for i in range(len(shifts))]
    gts, results, ious = [], [], []
    for i, dx in enumerate(shifts):
        square = np.zeros((h, w), bool)
        square[10:30, 10:30] = True
        gts.append(_gt_annotation(i + 1, i + 1, i + 1, square))
        results.append({"image_id": i + 1, "category_id": i + 1, "segmentation": encode_rle(_shift(square, dx)[None])[0],
                        "score": 0.9})
        ious.append((20 - dx) / (20 + dx))
    stats = mask_ap(_coco(images, gts, len(shifts)), results)
    # IoUs 1, 0.818, 0.667, 0.538 pass 10, 7, 4, 1 of the ten thresholds
    assert _expected_ap(ious) == pytest.approx((1.0 + 0.7 + 0.4 + 0.1) / 4)
    assert stats["AP"] == pytest.approx(_expected_ap(ious))
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.5)


def test_mask_ap_without_results_is_zero():
    images = [{"id": 1, "width": 8, "height": 8, "file_name": "a.png"}]
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    assert mask_ap(_coco(images, [_gt_annotation(1, 1, 1, mask)], 1), [])["AP"] == 0.0


def test_load_detections_validates_and_filters():
    dets = [{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5},
            {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.1}]
    assert [d["score"] for d in load_detections(dets, min_score=0.2)[1]] == [0.5]
    with pytest.raises(TinySAMError, match="bbox"):
        load_detections([{"image_id": 1, "category_id": 1}])
    with pytest.raises(TinySAMError, match="list"):
        load_detections({"image_id": 1})
    np.testing.assert_array_equal(xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory, image_dir, parity_predictor):
    """Images, detector boxes (each object its own category), and the model's own masks for those boxes."""
    from tinysam_backend import load_image

    out = tmp_path_factory.mktemp("coco")
    _, items = image_dir
    items = [it for it in items if "coins" in it[0]]  # one image, many objects: keeps the model's share small
    images, detections, own = [], [], []
    for i, (path, gt, _) in enumerate(items):
        rgb = load_image(path)
        images.append({"id": i + 1, "width": rgb.shape[1], "height": rgb.shape[0], "file_name": path})
        for mask in gt:
            ys, xs = np.nonzero(mask)
            cat = len(detections) + 1
            detections.append({"image_id": i + 1, "category_id": cat, "score": 0.5 + 0.01 * cat,
                               "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                        float(ys.max() - ys.min() + 1)]})
        image_dets = [d for d in detections if d["image_id"] == i + 1]
        own.extend(segment_detections(parity_predictor, rgb, image_dets, boxes_per_batch=8))
    (out / "detections.json").write_text(json.dumps(detections))
    return out, images, detections, own


def _write_gt(path, images, masks):
    annotations = [_gt_annotation(k + 1, r["image_id"], r["category_id"], m) for k, (r, m) in enumerate(masks)]
    n_cat = max(r["category_id"] for r, _ in masks)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cat + 1)]}))


def _eval_cli(tmp_path, coco_dir, annotations, checkpoint):
    from tinysam_backend.cli import main

    out = tmp_path / f"{annotations.stem}_stats.json"
    rc = main(["eval-coco", "--images", "/", "--annotations", str(annotations),
               "--boxes", str(coco_dir / "detections.json"), "--checkpoint", checkpoint, "--json", str(out),
               "--boxes-per-batch", "8", "--precision", "fp32"])  # the arithmetic of the fixture's parity_predictor
    assert rc == 0
    return json.loads(out.read_text())


def test_eval_coco_cli_self_and_shifted(tmp_path, coco_set, parity_checkpoint, capsys):
    coco_dir, images, detections, own = coco_set
    own_masks = [(r, decode_rle(r["segmentation"])) for r in own]
    assert all(m.any() for _, m in own_masks), "the random-weight model gave an empty mask for a box"

    _write_gt(tmp_path / "self.json", images, own_masks)
    result = _eval_cli(tmp_path, coco_dir, tmp_path / "self.json", str(parity_checkpoint))
    assert result["images"] == len(images) and result["detections"] == len(detections)
    assert result["stats"]["AP"] == pytest.approx(1.0)
    assert "AP50" in capsys.readouterr().out

    shifted = [(r, _shift(m, 3)) for r, m in own_masks]
    ious = [float(np.logical_and(m, s).sum() / np.logical_or(m, s).sum()) for (_, m), (_, s) in zip(own_masks, shifted)]
    _write_gt(tmp_path / "shifted.json", images, shifted)
    result = _eval_cli(tmp_path, coco_dir, tmp_path / "shifted.json", str(parity_checkpoint))
    assert result["stats"]["AP"] == pytest.approx(_expected_ap(ious))
    assert result["stats"]["AP"] < 1.0
