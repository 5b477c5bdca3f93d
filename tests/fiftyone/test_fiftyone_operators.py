"""The plugin's operators on real FiftyOne: immediately through `execute_operator`, and delegated — queued,
then run by `DelegatedOperationService().execute_queued_operations`, the loop `fiftyone delegated launch` runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PLUGIN = "@tinysam/tinysam"
REPO = Path(__file__).resolve().parents[2]
# Random-weight parity model: masks are noise, so the filters must let them through (see the parity manifest).
EVERYTHING_TEST_PARAMS = {"points_per_side": 4, "pred_iou_thresh": 0.06, "stability_score_thresh": 0.0,
                              "high_score_thresh": 0.12, "box_nms_thresh": 1.0, "points_per_batch": 16}


def _run(fo, uri, dataset, params, *, view=None, delegate=False):
    import fiftyone.operators as foo

    result = foo.execute_operator(f"{PLUGIN}/{uri}", ctx={
        "dataset": dataset, "view": view if view is not None else dataset.view(),
        "params": params, "request_delegation": delegate})
    if not delegate:
        return result
    from fiftyone.operators.delegated import DelegatedOperationService

    assert result.delegated
    op_id = result.result["id"]
    service = DelegatedOperationService()
    assert service.get(op_id).run_state == "queued"
    # what `fiftyone delegated launch` loops over; restricted to this dataset, as the database may be shared
    service.execute_queued_operations(dataset_name=dataset.name, limit=10, log=True)
    op = service.get(op_id)
    assert op.run_state == "completed", op.result.error if op.result else op
    return op


def _requests(result):
    return [r["operator_uri"] for r in result.executor.to_json()["requests"]]


def _check_instance_masks(sample, field, image_size):
    """Every detection: relative box inside the image, a 2-D mask whose shape is the box's pixel extent."""
    from tinysam_backend.fiftyone_adapter import relative_box_to_pixels

    dets = sample[field].detections
    for d in dets:
        x, y, w, h = d.bounding_box
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
        mask = d.get_mask()
        assert mask is not None and mask.ndim == 2
        x0, y0, x1, y1 = relative_box_to_pixels(d.bounding_box, image_size)
        assert mask.shape == (y1 - y0, x1 - x0)
    return dets


def _size(sample):
    return sample.metadata.height, sample.metadata.width


def test_plugin_is_found_under_the_checkout(fo):
    import fiftyone.operators as foo

    uris = {op.uri for op in foo.list_operators()}
    assert {f"{PLUGIN}/auto_mask", f"{PLUGIN}/mask_from_boxes", f"{PLUGIN}/evaluate_masks"} <= uris


def test_auto_mask_immediate_writes_masks_resumes_and_evaluates(fo, dataset, checkpoint):
    params = dict(label_field="auto", checkpoint=checkpoint, mode="hierarchical", **EVERYTHING_TEST_PARAMS)
    result = _run(fo, "auto_mask", dataset, params)
    requests = _requests(result)
    # progress at the start and the end (throttled between), then reload and the summary as a notification
    assert requests[0] == "set_progress" and 2 <= requests.count("set_progress") <= len(dataset) + 1
    assert requests[-2:] == ["reload_dataset", "notify"]

    dataset.reload()
    first_ids = {}
    for sample in dataset:
        dets = _check_instance_masks(sample, "auto", _size(sample))
        assert len(dets) >= 1
        for d in dets:
            assert d.mask.dtype == bool and d.mask_path is None
            assert d.confidence > EVERYTHING_TEST_PARAMS["pred_iou_thresh"]
            assert d.stability_score >= 0.0 and d.area == int(d.mask.sum()) > 0
            assert d.label is None
        first_ids[sample.id] = [d.id for d in dets]

    # Interrupted run: one sample lost its masks. A rerun does that sample only.
    lost = dataset.first()
    lost["auto"] = None
    lost.save()
    _run(fo, "auto_mask", dataset, params)
    dataset.reload()
    for sample in dataset:
        ids = [d.id for d in sample.auto.detections]
        if sample.id == lost.id:
            assert ids and ids != first_ids[sample.id]
        else:
            assert ids == first_ids[sample.id]

    # auto_mask's masks carry no labels: evaluated class-agnostically, the GT labels stay as they were.
    result = _run(fo, "evaluate_masks", dataset, {"pred_field": "auto", "gt_field": "ground_truth",
                                                      "eval_key": "autoeval"})
    summary = result.result
    assert summary["classwise"] is False and summary["mAP"] is None
    dataset.reload()
    n_pred = dataset.count("auto.detections")
    n_gt = dataset.count("ground_truth.detections")
    assert summary["tp"] + summary["fp"] == n_pred and summary["tp"] + summary["fn"] == n_gt
    assert set(dataset.distinct("ground_truth.detections.label")) == {"coin", "square", "disk"}
    assert dataset.distinct("auto.detections.label") == []
    assert set(dataset.distinct("auto.detections.autoeval")) <= {"tp", "fp"}
    ious = dataset.values("autoeval_mean_best_iou")
    assert all(0.0 <= v <= 1.0 for v in ious)
    assert summary["mean_best_iou"] == pytest.approx(float(np.mean(ious)))


def test_auto_mask_delegated_on_disk(fo, dataset, checkpoint, mask_dir):
    view = dataset.match({"filepath": {"$regex": "shapes"}})
    params = dict(label_field="auto_disk", checkpoint=checkpoint, output_dir=str(mask_dir), mode="dense",
                  **{**EVERYTHING_TEST_PARAMS, "points_per_side": 3})
    op = _run(fo, "auto_mask", dataset, params, view=view, delegate=True)
    assert op.status.progress == pytest.approx(1.0)

    dataset.reload()
    assert dataset.count("auto_disk") == 1  # only the view's sample
    sample = view.first()
    dets = _check_instance_masks(sample, "auto_disk", _size(sample))
    assert dets
    for d in dets:
        assert d.mask is None and Path(d.mask_path).is_file()
        assert Path(d.mask_path).parent == mask_dir / "auto_disk" / sample.id


@pytest.mark.parametrize("delegate", [False, True], ids=["immediate", "delegated"])
def test_mask_from_boxes(fo, dataset, checkpoint, delegate):
    params = {"prompt_field": "boxes", "label_field": "box_masks", "checkpoint": checkpoint, "prompts_per_batch": 4}
    view = dataset.limit(1) if delegate else dataset.view()  # delegated: the queued view is honoured
    result = _run(fo, "mask_from_boxes", dataset, params, view=view, delegate=delegate)
    if not delegate:
        assert _requests(result)[-2:] == ["reload_dataset", "notify"]
    else:
        assert result.status.progress == pytest.approx(1.0)
        n_boxes = sum(len(s.boxes.detections) for s in view)
        assert result.result.result == {"label_field": "box_masks", "samples": 1, "skipped": 0, "masks": n_boxes,
                                        "failed": []}
    dataset.reload()
    assert dataset.count("box_masks") == len(view)
    for sample in view:
        dets = _check_instance_masks(sample, "box_masks", _size(sample))
        boxes = sample.boxes.detections
        assert [d.label for d in dets] == [b.label for b in boxes]
        assert [d.prompt_id for d in dets] == [b.id for b in boxes]
        assert all(d.confidence == pytest.approx(0.9) for d in dets)
        assert all(np.isfinite(d.predicted_iou) for d in dets)


@pytest.mark.parametrize("delegate", [False, True], ids=["immediate", "delegated"])
def test_evaluate_masks_against_itself_is_perfect(fo, dataset, delegate):
    dataset.clone_sample_field("ground_truth", "gt_copy")
    for sample in dataset:
        for k, d in enumerate(sample.gt_copy.detections):
            d.confidence = 1.0 - 0.01 * k
        sample.save()
    params = {"pred_field": "gt_copy", "gt_field": "ground_truth", "eval_key": "selfeval", "compute_mAP": True}
    result = _run(fo, "evaluate_masks", dataset, params, delegate=delegate)
    summary = result.result.result if delegate else result.result  # delegated: the operation's stored result
    n_gt = dataset.count("ground_truth.detections")
    assert summary["tp"] == n_gt and summary["fp"] == 0 and summary["fn"] == 0
    assert summary["mAP"] == pytest.approx(1.0) and summary["classwise"] is True
    assert summary["mean_best_iou"] == pytest.approx(1.0)

    dataset.reload()
    assert "selfeval" in dataset.list_evaluations()
    assert dataset.values("selfeval_tp") == [len(s.ground_truth.detections) for s in dataset]
    assert dataset.values("selfeval_mean_best_iou") == pytest.approx([1.0] * len(dataset))
    assert set(dataset.distinct("gt_copy.detections.selfeval")) == {"tp"}
    assert dataset.bounds("gt_copy.detections.selfeval_iou") == pytest.approx((1.0, 1.0))


def test_auto_mask_library_skips_unreadable_images_and_checks_params_first(fo, tmp_path, tiny_model):
    from tinysam_backend import Predictor
    from tinysam_backend.fiftyone_adapter import auto_mask

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    from PIL import Image

    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(good)
    bad.write_bytes(b"not an image")
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(good)), fo.Sample(filepath=str(bad))])
    with pytest.raises(ValueError, match="box_nms_thresh"):
        auto_mask(ds, "auto", predictor=Predictor(tiny_model), box_nms_thresh=2.0)
    assert "auto" not in ds.get_field_schema()
    seen = []
    summary = auto_mask(ds, "auto", predictor=Predictor(tiny_model), progress=lambda pb: seen.append(pb.progress),
                        **{**EVERYTHING_TEST_PARAMS, "pred_iou_thresh": -10.0})
    bad_id = ds.match({"filepath": str(bad)}).first().id
    assert summary["failed"] == [bad_id] and summary["samples"] == 1
    assert seen[0] == 0.0 and seen[-1] == 1.0 and 0.5 in seen and seen == sorted(seen)
    assert ds.count("auto") == 1 and ds[bad_id]["auto"] is None
    ds.delete()


def test_plugins_download_finds_the_plugin_in_a_repository_archive(fo, tmp_path):
    """`fiftyone plugins download URL --plugin-names @tinysam/tinysam` on an archive of the repository
    (served from loopback, as a GitHub archive would be: one top folder)."""
    import functools
    import http.server
    import threading
    import zipfile

    import fiftyone.plugins as fop

    archive = tmp_path / "serve" / "tinysam-backend-main.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in [REPO / "README.md", *sorted((REPO / "fiftyone_plugin").glob("*.*"))]:
            if path.is_file():
                zf.write(path, f"tinysam-backend-main/{path.relative_to(REPO)}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    old_dir = fo.config.plugins_dir
    fo.config.plugins_dir = str(tmp_path / "plugins")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        fop.download_plugin(url, plugin_names=[PLUGIN])
        plugins = {p.name: p for p in fop.list_plugins()}
        assert PLUGIN in plugins
        directory = Path(plugins[PLUGIN].directory)
        assert directory.is_relative_to(tmp_path / "plugins")
        assert (directory / "__init__.py").read_text() == (REPO / "fiftyone_plugin" / "__init__.py").read_text()
        assert set(plugins[PLUGIN].operators) == {"auto_mask", "mask_from_boxes", "evaluate_masks"}
    finally:
        fo.config.plugins_dir = old_dir
        server.shutdown()
        server.server_close()


def test_auto_mask_form_defaults_are_the_librarys(fo, dataset):
    """One source per fact: the form's segment-everything defaults are `EverythingParams`' (issue 15)."""
    import dataclasses

    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    from tinysam_backend.everything import EverythingParams

    operator = foo.get_operator(f"{PLUGIN}/auto_mask")
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    form = operator.resolve_input(ctx).to_json()["type"]["properties"]
    library = {f.name: f.default for f in dataclasses.fields(EverythingParams)}
    everything = {name: prop["type"]["default"] if "default" in prop["type"] else prop.get("default")
                  for name, prop in form.items() if name in library}
    assert everything and everything == {name: library[name] for name in everything}
    assert everything["points_per_batch"] == EverythingParams().points_per_batch
