"""Shared fixtures. Parity fixtures live in ../shared/parity (or $TINYSAM_PARITY_DIR).

Outside CI a missing fixture directory skips the tests that need it, with the reason; under CI (CI=true)
it fails them, so a CI run can never pass by skipping parity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/parity beside the checkout, else the fixed location /work/shared/parity (for a checkout elsewhere).
PARITY_CANDIDATES = [REPO.parent / "shared" / "parity", Path("/work/shared/parity")]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (or fail under CI) when a required external resource is missing."""
    if condition:
        return
    if _in_ci():
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    env = os.environ.get("TINYSAM_PARITY_DIR")
    candidates = [Path(env)] if env else PARITY_CANDIDATES
    path = next((p for p in candidates if (p / "manifest.json").is_file()), candidates[0])
    require((path / "manifest.json").is_file(),
            f"parity fixtures not found at {path} (set TINYSAM_PARITY_DIR to the directory holding manifest.json)")
    return path


@pytest.fixture(scope="session")
def parity_manifest(parity_dir: Path) -> dict:
    return json.loads((parity_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def parity_checkpoint(parity_dir: Path, parity_manifest: dict) -> Path:
    path = parity_dir / parity_manifest["checkpoint"]
    require(path.is_file(), f"parity checkpoint missing: {path}")
    return path


@pytest.fixture(scope="session")
def parity_model(parity_checkpoint: Path):
    from tinysam_backend import load_model

    # fp32 of the engine `auto` picks on this host (the official outputs are fp32; where the CPU has bf16, auto's
    # default precision is bf16, whose accuracy benchmarks/engine_bench.py measures instead).
    return load_model(parity_checkpoint, precision="fp32")


@pytest.fixture(scope="session")
def parity_predictor(parity_model):
    from tinysam_backend import Predictor

    return Predictor(parity_model)


@pytest.fixture(scope="session")
def parity_images(parity_manifest: dict) -> dict:
    """name → H×W×3 uint8 RGB, built as the fixture README says, SHA-256 checked."""
    import hashlib

    import numpy as np
    import skimage.data

    from tinysam_backend.image_io import array_to_rgb

    images = {}
    for name, info in parity_manifest["images"].items():
        rgb = array_to_rgb(getattr(skimage.data, name)())
        digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()
        if digest != info["sha256_rgb"]:
            pytest.fail(f"image {name}: SHA-256 {digest} differs from the manifest's {info['sha256_rgb']}")
        images[name] = rgb
    return images


@pytest.fixture(scope="session")
def parity_embeddings(parity_predictor, parity_images) -> dict:
    return {name: parity_predictor.embed(img) for name, img in parity_images.items()}


@pytest.fixture(scope="session")
def tiny_model():
    """A small random TinyViT model (image_size 256) for fast unit tests."""
    import torch

    from tinysam_backend.modeling import build_sam

    torch.manual_seed(0)
    return build_sam("tiny_test_t")
