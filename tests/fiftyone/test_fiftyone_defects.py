"""Issue 14's defects, each against real FiftyOne and a real (random-weight parity) model: a missing image, wrong
label types / media / thresholds, evaluation without ground truth, run bookkeeping of the per-sample field,
FiftyOne's progress convention, class-agnostic runs stored on the user's own view."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_fiftyone_operators import EVERYTHING_TEST_PARAMS, PLUGIN


@pytest.fixture
def predictor(parity_model):
    from tinysam_backend import Predictor

    return Predictor(parity_model)


def _copy_dataset_with_missing_image(fo, dataset, tmp_path):
    """The fixture dataset, but the first sample's image is a copy that is then deleted."""
    first = dataset.first()
    copy = tmp_path / "gone.png"
    shutil.copy(first.filepath, copy)
    first.filepath = str(copy)
    first.save()
    copy.unlink()
    return first.id, copy


def test_mask_from_boxes_skips_a_missing_image_reports_it_and_resumes(fo, dataset, predictor, tmp_path):
    from tinysam_backend.fiftyone_adapter import mask_from_boxes

    gone_id, gone_path = _copy_dataset_with_missing_image(fo, dataset, tmp_path)
    other = dataset.exclude(gone_id).first()
    summary = mask_from_boxes(dataset, "boxes", "box_masks", predictor=predictor, progress=False)
    assert summary["failed"] == [gone_id]
    assert summary["samples"] == 1 and summary["masks"] == len(other.boxes.detections)
    dataset.reload()
    assert dataset[gone_id]["box_masks"] is None
    assert len(dataset[other.id]["box_masks"].detections) == len(other.boxes.detections)

    # the image comes back: a rerun does that sample only (the other keeps its labels' ids)
    kept = [d.id for d in dataset[other.id]["box_masks"].detections]
    shutil.copy(other.filepath, gone_path)
    summary = mask_from_boxes(dataset, "boxes", "box_masks", predictor=predictor, progress=False)
    assert summary["samples"] == 1 and summary["skipped"] == 1 and summary["failed"] == []
    dataset.reload()
    assert dataset[gone_id]["box_masks"] is not None
    assert [d.id for d in dataset[other.id]["box_masks"].detections] == kept


def test_delegated_run_with_a_failed_sample_is_not_a_clean_success(fo, dataset, checkpoint, tmp_path):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    gone_id, _ = _copy_dataset_with_missing_image(fo, dataset, tmp_path)
    result = foo.execute_operator(f"{PLUGIN}/mask_from_boxes", ctx={
        "dataset": dataset, "view": dataset.view(), "request_delegation": True,
        "params": {"prompt_field": "boxes", "label_field": "box_masks", "checkpoint": checkpoint}})
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name, limit=10)
    op = service.get(result.result["id"])
    assert op.run_state == "failed"
    assert "1 samples failed" in op.result.error and gone_id in op.result.error
    dataset.reload()
    assert dataset.count("box_masks") == len(dataset) - 1  # the others were written


def test_wrong_label_types_media_and_thresholds_are_refused_before_any_work(fo, dataset, image_dir):
    from tinysam_backend.fiftyone_adapter import auto_mask, evaluate_masks, mask_from_boxes

    for sample in dataset:
        sample["cls"] = fo.Classification(label="thing")
        sample.save()
    schema = set(dataset.get_field_schema())
    # a checkpoint that does not exist: reaching the model loader would raise MissingCheckpointError instead
    nowhere = "/nonexistent/tinysam.pth"
    with pytest.raises(ValueError, match=r"prompt_field 'cls' holds Classification; expected Detections"):
        mask_from_boxes(dataset, "cls", "out", checkpoint=nowhere)
    with pytest.raises(ValueError, match=r"label_field 'cls' already holds Classification"):
        auto_mask(dataset, "cls", checkpoint=nowhere)
    with pytest.raises(ValueError, match=r"label_field 'cls' already holds Classification"):
        mask_from_boxes(dataset, "boxes", "cls", checkpoint=nowhere)
    with pytest.raises(ValueError, match=r"pred_iou_thresh must be in \[-inf, 1.0\], got 5"):
        auto_mask(dataset, "auto", checkpoint=nowhere, pred_iou_thresh=5)
    with pytest.raises(ValueError, match=r"stability_score_thresh must be in"):
        auto_mask(dataset, "auto", checkpoint=nowhere, stability_score_thresh=1.5)
    with pytest.raises(ValueError, match=r"unknown segment-everything parameters \['points_per_sid'\]"):
        auto_mask(dataset, "auto", checkpoint=nowhere, points_per_sid=8)
    with pytest.raises(ValueError, match=r"pred_field 'cls' holds Classification"):
        evaluate_masks(dataset, "cls", "ground_truth", "ev")
    assert set(dataset.get_field_schema()) == schema and dataset.list_evaluations() == []

    video = fo.Dataset()
    try:
        video.media_type = "video"
        with pytest.raises(ValueError, match=r"media_type 'image'\), got media_type 'video'"):
            auto_mask(video, "auto", checkpoint=nowhere)
        with pytest.raises(ValueError, match=r"got media_type 'video'"):
            mask_from_boxes(video, "boxes", "out", checkpoint=nowhere)
    finally:
        video.delete()


def test_evaluate_masks_on_a_view_without_ground_truth_writes_a_whole_run(fo, dataset):
    from tinysam_backend.fiftyone_adapter import evaluate_masks

    dataset.add_sample_field("no_gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    n_pred = dataset.count("ground_truth.detections")
    summary = evaluate_masks(dataset, "ground_truth", "no_gt", "ev", progress=False)
    assert (summary["tp"], summary["fp"], summary["fn"]) == (0, n_pred, 0)
    assert summary["mean_best_iou"] is None
    assert dataset.list_evaluations() == ["ev"]
    assert dataset.values("ev_mean_best_iou") == [None] * len(dataset)
    assert dataset.load_evaluation_results("ev").key == "ev"


def test_delete_and_rename_evaluation_keep_the_per_sample_field_with_the_run(fo, dataset):
    from tinysam_backend.fiftyone_adapter import evaluate_masks

    dataset.clone_sample_field("ground_truth", "pred")
    evaluate_masks(dataset, "pred", "ground_truth", "ev", progress=False)
    assert dataset.values("ev_mean_best_iou") == pytest.approx([1.0] * len(dataset))
    dataset.rename_evaluation("ev", "ev2")
    schema = dataset.get_field_schema()
    assert "ev2_mean_best_iou" in schema and "ev_mean_best_iou" not in schema
    assert dataset.values("ev2_mean_best_iou") == pytest.approx([1.0] * len(dataset))
    results = dataset.load_evaluation_results("ev2")
    assert results.key == "ev2" and len(results.ytrue) == dataset.count("ground_truth.detections")
    dataset.delete_evaluation("ev2")
    assert not [f for f in dataset.get_field_schema() if f.startswith("ev")]
    assert dataset.list_evaluations() == []


def test_progress_follows_fiftyones_convention_per_sample_and_within_an_image(fo, dataset, predictor, capsys):
    from tinysam_backend.fiftyone_adapter import auto_mask, mask_from_boxes

    params = {**EVERYTHING_TEST_PARAMS, "points_per_side": 8, "points_per_batch": 4}
    auto_mask(dataset, "a_true", predictor=predictor, progress=True, **params)
    assert "samples" in capsys.readouterr().out  # FiftyOne's progress bar was drawn
    auto_mask(dataset, "a_false", predictor=predictor, progress=False, **params)
    assert "samples" not in capsys.readouterr().out
    seen = []
    auto_mask(dataset, "a_cb", predictor=predictor, progress=lambda pb: seen.append(pb.progress), **params)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    inside_first = [p for p in seen if 0.0 < p < 0.5]  # the first of two images, while it is segmented
    assert len(inside_first) >= 3
    assert dataset.count("a_true") == dataset.count("a_false") == dataset.count("a_cb") == len(dataset)
    seen = []
    mask_from_boxes(dataset, "boxes", "m", predictor=predictor, progress=lambda pb: seen.append(pb.progress))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and 0.5 in seen


def test_class_agnostic_run_is_stored_on_the_users_view_and_hidden_fields_work(fo, dataset):
    import fiftyone.core.stages as fos

    from tinysam_backend.fiftyone_adapter import evaluate_masks

    dataset.clone_sample_field("ground_truth", "unlabelled")
    for sample in dataset:
        for k, d in enumerate(sample.unlabelled.detections):
            d.label, d.confidence = None, 1.0 - 0.01 * k
        sample.save()
    view = dataset.select_fields("ground_truth")  # hides the predictions
    summary = evaluate_masks(view, "unlabelled", "ground_truth", "agn", progress=False)
    n_gt = dataset.count("ground_truth.detections")
    assert summary["classwise"] is False and (summary["tp"], summary["fp"], summary["fn"]) == (n_gt, 0, 0)
    eval_view = dataset.load_evaluation_view("agn")
    assert not [s for s in eval_view._stages if isinstance(s, fos.SetField)]
    assert set(eval_view.distinct("ground_truth.detections.label")) == {"coin", "square", "disk"}
    assert dataset.distinct("unlabelled.detections.label") == []
    assert set(dataset.distinct("unlabelled.detections.agn")) == {"tp"}
    summary = evaluate_masks(view, "unlabelled", "ground_truth", "agn_map", compute_mAP=True, progress=False)
    assert summary["mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="compute_mAP needs a confidence"):
        evaluate_masks(view, "ground_truth", "unlabelled", "no_conf", compute_mAP=True, progress=False)
    assert "no_conf" not in dataset.list_evaluations()


def test_auto_mask_and_mask_from_boxes_write_through_a_view_that_hides_the_target(fo, dataset, predictor):
    from tinysam_backend.fiftyone_adapter import auto_mask, mask_from_boxes

    view = dataset.select_fields("ground_truth")  # hides `boxes` and the new fields
    summary = mask_from_boxes(view, "boxes", "hidden_masks", predictor=predictor, progress=False)
    assert summary["samples"] == len(dataset)
    summary = auto_mask(view, "hidden_auto", predictor=predictor, progress=False, **EVERYTHING_TEST_PARAMS)
    assert summary["samples"] == len(dataset)
    assert auto_mask(view, "hidden_auto", predictor=predictor, progress=False)["skipped"] == len(dataset)
    dataset.reload()
    assert dataset.count("hidden_masks.detections") == dataset.count("boxes.detections")
    assert dataset.count("hidden_auto") == len(dataset)


def test_keypoint_prompts_give_one_mask_per_keypoint_object(fo, dataset, predictor):
    from tinysam_backend.fiftyone_adapter import mask_from_boxes

    for sample in dataset:
        kps = [fo.Keypoint(label=d.label, points=[[d.bounding_box[0] + d.bounding_box[2] / 2,
                                                   d.bounding_box[1] + d.bounding_box[3] / 2]])
               for d in sample.boxes.detections]
        sample["points"] = fo.Keypoints(keypoints=kps)
        sample.save()
    mask_from_boxes(dataset, "points", "point_masks", predictor=predictor, progress=False)
    for sample in dataset:
        dets = sample.point_masks.detections
        assert [d.label for d in dets] == [k.label for k in sample.points.keypoints]
        assert [d.prompt_id for d in dets] == [k.id for k in sample.points.keypoints]
        assert all(np.isfinite(d.predicted_iou) and d.confidence == d.predicted_iou for d in dets)
