"""Fixtures of the Label Studio backend tests (helpers in ls_helpers.py).

- `tiny_backend` / `client`: the Flask app over the tiny random TinySAM (image_size 256), with a media
  directory laid out like Label Studio's (`upload/<project>/<file>`), for fast unit tests;
- `recorded`: request bodies recorded from a real Label Studio 1.23.2 (tests/label_studio/data).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ls_helpers import DATA, EVERYTHING_TEST_ENV, random_image
from PIL import Image


@pytest.fixture(scope="session")
def recorded() -> dict:
    """name → JSON body Label Studio 1.23.2 sent (captured from a real server, tokens redacted)."""
    return {p.stem: json.loads(p.read_text()) for p in DATA.glob("*.json")}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A Label Studio media directory: upload/1/ holds 8 different PNGs (48×64) and the recorded task's image."""
    root = tmp_path_factory.mktemp("ls-media")
    upload = root / "upload" / "1"
    upload.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(random_image(i, 48, 64)).save(upload / f"img{i}.png")
    Image.fromarray(random_image(99, 60, 80)).save(upload / "7ec5dc46-pic.png")  # the recorded requests' image
    (upload / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    (upload / "doc.pdf").write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    return root


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model):
    from tinysam_backend import Predictor

    return Predictor(tiny_model.eval())


@pytest.fixture()
def ls_settings(media_dir):
    from tinysam_backend.label_studio.settings import LabelStudioSettings

    env = {"LABEL_STUDIO_MEDIA_DIR": str(media_dir), **EVERYTHING_TEST_ENV}
    return LabelStudioSettings.from_env(env)


@pytest.fixture()
def tiny_backend(tiny_predictor, ls_settings):
    from tinysam_backend.label_studio.backend import SegmentationBackend

    return SegmentationBackend(tiny_predictor, ls_settings, "tinysam-test")


@pytest.fixture()
def app(tiny_backend, ls_settings):
    from tinysam_backend.config import Settings
    from tinysam_backend.label_studio.app import create_app

    return create_app(Settings(), ls_settings, backend=tiny_backend)


@pytest.fixture()
def client(app):
    return app.test_client()


