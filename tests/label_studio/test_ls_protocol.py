"""Pure protocol conversions: request parsing, context → prompt, percent → pixels, masks → brush regions, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ls_helpers import keypoint, rectangle

from tinysam_backend.errors import PromptError
from tinysam_backend.label_studio.brush_rle import brush_rle_to_mask, mask_to_brush_rle
from tinysam_backend.label_studio.label_config import LabelConfigError, parse_label_config
from tinysam_backend.label_studio.protocol import (
    RequestError,
    brush_region,
    dumps,
    parse_predict_request,
    prediction,
    prompt_from_context,
    prompt_to_pixels,
    resize_mask_nearest,
    rotated_box_extent,
    task_image_reference,
)


@pytest.fixture()
def config(recorded):
    return parse_label_config(recorded["ls_1.23.2_predict_interactive"]["label_config"])


def test_recorded_interactive_request(recorded, config):
    req = parse_predict_request(recorded["ls_1.23.2_predict_interactive"])
    assert len(req.tasks) == 1 and req.project == "1.1795334838"
    prompt = prompt_from_context(req.context_regions, config)
    assert prompt.to_name == "image" and prompt.label == "cat"
    assert prompt.original_size == (60, 80)
    coords, labels, box = prompt_to_pixels(prompt, (60, 80))
    np.testing.assert_allclose(coords, [[40.0, 30.0]])  # 50 % of 80 × 60
    assert labels.tolist() == [1] and box is None
    assert task_image_reference(req.tasks[0], config, "image") == "/data/upload/1/7ec5dc46-pic.png"


def test_recorded_batch_request_has_no_context(recorded):
    req = parse_predict_request(recorded["ls_1.23.2_predict_batch"])
    assert req.context_regions is None


def test_clicks_and_latest_rectangle_form_one_prompt(config):
    regions = [keypoint(10, 20, 200, 100, label="cat"), keypoint(30, 40, 200, 100, positive=False, label="cat"),
               rectangle(0, 0, 10, 10, 200, 100), keypoint(50, 50, 200, 100, positive=None, label="cat"),
               rectangle(10, 20, 50, 40, 200, 100),
               {"type": "brushlabels", "value": {"rle": [1, 2]}, "to_name": "image"}]  # ignored
    prompt = prompt_from_context(regions, config)
    coords, labels, box = prompt_to_pixels(prompt, (100, 200))
    np.testing.assert_allclose(coords, [[20, 20], [60, 40], [100, 50]])
    assert labels.tolist() == [1, 0, 1]  # is_positive missing = positive
    np.testing.assert_allclose(box, [20, 20, 120, 60])  # only the latest rectangle
    assert prompt.label == "Person"  # the latest prompt region's label
    assert [h[0] for h in prompt.history] == ["point", "point", "point", "box"]
    assert prompt.previous_history() == prompt.history[:-1]


def test_label_from_the_interfaces_value_labels(config):
    region = keypoint(10, 10, 50, 50)
    region["value"] = {"x": 10, "y": 10, "width": 0.5, "labels": ["dog"]}  # how the labeling UI serialises it
    assert prompt_from_context([region], config).label == "dog"


def test_history_grows_click_by_click(config):
    first = prompt_from_context([keypoint(10, 10, 50, 50)], config)
    second = prompt_from_context([keypoint(10, 10, 50, 50), keypoint(20, 20, 50, 50, positive=False)], config)
    assert first.previous_history() is None
    assert second.previous_history() == first.history


@pytest.mark.parametrize("region, message", [
    (keypoint(100.5, 10, 50, 50), "outside the image"),
    (keypoint(-1, 10, 50, 50), "outside the image"),
    ({**keypoint(10, 10, 50, 50), "value": {"x": "10", "y": 3}}, "value.x must be a finite number"),
    ({**keypoint(10, 10, 50, 50), "value": {"x": float("nan"), "y": 3}}, "finite number"),
    ({**keypoint(10, 10, 50, 50), "original_width": 0}, "original_width must be a positive integer"),
    ({**keypoint(10, 10, 50, 50), "original_height": 2.5}, "original_height must be a positive integer"),
    ({**keypoint(10, 10, 50, 50), "is_positive": "no"}, "is_positive must be true or false"),
    ({**keypoint(10, 10, 50, 50), "image_rotation": 90}, "rotated image"),
    ({**keypoint(10, 10, 50, 50), "to_name": None}, "to_name must name the Image tag"),
    (rectangle(120, 10, 5, 5, 50, 50), "lies outside the image"),
    (rectangle(10, 10, -5, 5, 50, 50), "must be >= 0"),
    ({"type": "choices", "value": {"choices": ["a"]}}, "no keypoint or rectangle region"),
])
def test_bad_regions_name_the_problem(config, region, message):
    with pytest.raises(PromptError, match=message):
        prompt_from_context([region], config)


def test_unknown_image_tag(config):
    with pytest.raises(LabelConfigError, match="Image tags are"):
        prompt_from_context([keypoint(10, 10, 50, 50, to_name="photo")], config)


def test_regions_of_different_sizes_are_refused(config):
    with pytest.raises(PromptError, match="original size"):
        prompt_from_context([keypoint(10, 10, 50, 50), keypoint(10, 10, 60, 50)], config)


def test_rotated_rectangle_extent():
    # 90° clockwise about the top-left corner: a 10×20 (px) box at (50, 50) covers x 30..50, y 50..60.
    x0, y0, x1, y1 = rotated_box_extent(50, 50, 10, 20, 90, 100, 100)
    assert (x0, y0, x1, y1) == pytest.approx((30, 50, 50, 60))
    assert rotated_box_extent(10, 20, 30, 40, 0, 200, 100) == pytest.approx((10, 20, 40, 60))
    # Rotation is in pixels: on a 200×100 image a 45° square of 20 px side spans 20·√2 px in width.
    x0, _, x1, _ = rotated_box_extent(50, 50, 10, 20, 45, 200, 100)
    assert (x1 - x0) * 2 == pytest.approx(20 * math.sqrt(2))


@pytest.mark.parametrize("body, status, message", [
    ([], 400, "JSON object"),
    ({"tasks": []}, 400, "non-empty list"),
    ({"tasks": [1]}, 400, r"tasks\[0\] must be an object"),
    ({"tasks": [{"id": 1}]}, 400, r"tasks\[0\].data must be an object"),
    ({"tasks": [{"data": {}}]}, 400, "label_config"),
    ({"tasks": [{"data": {}}], "label_config": "<View/>", "params": []}, 400, "'params' must be an object"),
    ({"tasks": [{"data": {}}], "label_config": "<View/>", "params": {"context": 3}}, 400, "context"),
    ({"tasks": [{"data": {}}], "label_config": "<View/>", "params": {"context": {"result": {}}}}, 400, "list of regions"),
    ({"tasks": [{"data": {}}], "label_config": "<View/>", "params": {"context": {"result": [5]}}}, 400,
     r"result\[0\] must be an object"),
])
def test_malformed_requests(body, status, message):
    with pytest.raises(RequestError, match=message) as info:
        parse_predict_request(body)
    assert info.value.status == status


def test_task_without_image_url(config):
    with pytest.raises(RequestError, match="no image URL under data.image") as info:
        task_image_reference({"id": 7, "data": {"text": "x"}}, config, "image")
    assert info.value.status == 422


def test_brush_region_shape_and_label(config):
    mask = np.zeros((6, 9), bool)
    mask[1:4, 2:7] = True
    brush = config.brush_for("image")
    region = brush_region(mask, brush, "image", "dog", 0.75)
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == (9, 6)
    assert region["value"]["brushlabels"] == ["dog"] and region["value"]["format"] == "rle"
    assert np.array_equal(brush_rle_to_mask(region["value"]["rle"], 6, 9), mask)
    assert prediction([region], "v1") == {"result": [region], "score": 0.75, "model_version": "v1"}
    assert prediction([], "v1")["score"] == 0.0


def test_resize_mask_nearest():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    out = resize_mask_nearest(mask, (8, 6))
    assert out.shape == (8, 6)
    assert out[:4, :3].all() and not out[4:, :].any() and not out[:, 3:].any()


def test_dumps_writes_rle_arrays_as_lists():
    rng = np.random.default_rng(3)
    rles = [mask_to_brush_rle(rng.random((30, 40)) < 0.5), mask_to_brush_rle(np.ones((5, 5), bool))]
    body = {"results": [{"result": [{"value": {"format": "rle", "rle": rle}, "note": 'say "rle-" and \\ ü'}
                                    for rle in rles]}],
            "model_version": "v", "tricky": "rle-0"}
    got = json.loads(dumps(body))
    assert [r["value"]["rle"] for r in got["results"][0]["result"]] == [r.tolist() for r in rles]
    assert got["results"][0]["result"][1]["note"] == 'say "rle-" and \\ ü' and got["tricky"] == "rle-0"
    assert json.loads(dumps({"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]}
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"a": np.zeros(3, np.float32)})
