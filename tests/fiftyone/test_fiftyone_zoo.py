"""TinySAM through FiftyOne's model zoo: the repository registered as a remote zoo model source (an archive of it
served from loopback, as GitHub would serve one), `foz.load_zoo_model`, then `dataset.apply_model` with box and
keypoint prompt fields and without one (segment-everything), compared with the library functions."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0.06, "stability_score_thresh": 0.0, "high_score_thresh": 0.12,
              "box_nms_thresh": 1.0, "points_per_batch": 16}


@pytest.fixture
def zoo_source(fo, tmp_path, monkeypatch):
    """URL of a zip of the repository's zoo source (with another manifest.json elsewhere in the tree, as in the
    repository), FiftyOne's model zoo directory in tmp_path."""
    archive = tmp_path / "serve" / "tinysam-backend-main.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in [*sorted((REPO / "fiftyone_zoo").glob("*.*")), REPO / "weights" / "manifest.json"]:
            zf.write(path, f"tinysam-backend-main/{path.relative_to(REPO)}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    finally:
        server.shutdown()
        server.server_close()


def _masks(dets, size):
    from tinysam_backend.fiftyone_adapter import detection_to_mask

    return [detection_to_mask(d, size) for d in dets]


def test_zoo_model_apply_model_matches_the_library(fo, dataset, zoo_source, checkpoint, tmp_path, monkeypatch):
    import fiftyone.zoo as foz

    from tinysam_backend import Predictor, load_model
    from tinysam_backend.fiftyone_adapter import auto_mask, mask_from_boxes

    foz.register_zoo_model_source(zoo_source)
    assert {"tinysam", "tinysam-int8"} <= set(foz.list_zoo_models(source=zoo_source))

    # "download": the project's fetch finds the checkpoint in the TinySAM cache (no network) and links it
    cache = tmp_path / "tinysam-cache"
    cache.mkdir()
    shutil.copy(checkpoint, cache / "tinysam_42.3.pth")
    monkeypatch.setenv("TINYSAM_CACHE_DIR", str(cache))
    monkeypatch.delenv("TINYSAM_CHECKPOINT", raising=False)
    model = foz.load_zoo_model("tinysam", device="cpu", **EVERYTHING)
    assert foz.is_zoo_model_downloaded("tinysam")
    assert Path(foz.find_zoo_model("tinysam")).read_bytes() == Path(checkpoint).read_bytes()

    # box prompts, batches of 2 images per predict_all
    dataset.apply_model(model, label_field="zoo_masks", prompt_field="boxes", batch_size=2)
    predictor = Predictor(load_model(checkpoint))
    mask_from_boxes(dataset, "boxes", "lib_masks", predictor=predictor, progress=False)
    dataset.reload()
    for sample in dataset:
        size = (sample.metadata.height, sample.metadata.width)
        zoo, lib = sample.zoo_masks.detections, sample.lib_masks.detections
        assert [d.label for d in zoo] == [b.label for b in sample.boxes.detections]
        assert [d.prompt_id for d in zoo] == [b.id for b in sample.boxes.detections]
        for a, b in zip(_masks(zoo, size), _masks(lib, size)):
            np.testing.assert_array_equal(a, b)

    # keypoint prompts (the box centres)
    for sample in dataset:
        sample["points"] = fo.Keypoints(keypoints=[
            fo.Keypoint(label=d.label, points=[[d.bounding_box[0] + d.bounding_box[2] / 2,
                                                d.bounding_box[1] + d.bounding_box[3] / 2]])
            for d in sample.boxes.detections])
        sample.save()
    dataset.apply_model(model, label_field="zoo_point_masks", prompt_field="points")
    dataset.reload()
    for sample in dataset:
        assert [d.prompt_id for d in sample.zoo_point_masks.detections] == [k.id for k in sample.points.keypoints]

    # no prompt field: segment-everything, the same masks as auto_mask with the same parameters
    dataset.apply_model(model, label_field="zoo_auto")
    auto_mask(dataset, "lib_auto", predictor=predictor, progress=False, **EVERYTHING)
    dataset.reload()
    for sample in dataset:
        size = (sample.metadata.height, sample.metadata.width)
        zoo, lib = _masks(sample.zoo_auto.detections, size), _masks(sample.lib_auto.detections, size)
        assert len(zoo) == len(lib) >= 1
        for a, b in zip(zoo, lib):
            np.testing.assert_array_equal(a, b)


def test_zoo_model_offline_with_a_checkpoint_argument(fo, dataset, zoo_source, checkpoint, tmp_path, monkeypatch):
    """No network, nothing in any cache: the download hook only warns, `checkpoint=PATH` is used."""
    import fiftyone.zoo as foz

    from tinysam_backend.errors import MissingCheckpointError
    from tinysam_backend.fiftyone_adapter import zoo

    foz.register_zoo_model_source(zoo_source)
    monkeypatch.setenv("TINYSAM_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("TINYSAM_CHECKPOINT", raising=False)

    def offline_fetch(*args, **kwargs):
        raise OSError("offline (test)")

    monkeypatch.setattr("tinysam_backend.weights.fetch", offline_fetch)
    with pytest.raises(MissingCheckpointError, match="not downloaded"):
        foz.load_zoo_model("tinysam", cache=False)
    model = foz.load_zoo_model("tinysam", checkpoint=checkpoint, cache=False, **EVERYTHING)
    assert isinstance(model, zoo.TinySAMModel)
    dataset.apply_model(model, label_field="offline_masks", prompt_field="boxes")
    assert dataset.count("offline_masks.detections") == dataset.count("boxes.detections")
    with pytest.raises(ValueError, match="pred_iou_thresh must be in"):
        foz.load_zoo_model("tinysam", checkpoint=checkpoint, cache=False, pred_iou_thresh=5)
