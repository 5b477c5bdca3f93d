"""Helpers of the Label Studio backend tests (imported by conftest.py and the test modules): the pytest-only pieces
(skip or fail on a missing resource, recorded data, everything-mode settings for random weights) and, re-exported, the
harness the benchmarks share (`benchmarks/ls_harness.py`: request builders, test images, `serve()`, a real Label
Studio)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(REPO / "benchmarks"))

from ls_harness import (  # benchmarks/ is on the path from here on
    LABEL_CONFIG,
    OFFLINE_ENV,
    TOKEN,
    LabelStudio,
    Nginx,
    Served,
    SlowClients,
    free_port,
    keypoint,
    label_studio_env,
    label_studio_executable,
    nginx_binary,
    predict_body,
    random_image,
    rectangle,
    replica_config,
    serve,
    start_label_studio,
    wait_for_prediction,
)

__all__ = ["DATA", "EVERYTHING_TEST_ENV", "LABEL_CONFIG", "OFFLINE_ENV", "REPO", "SAME_ARITHMETIC_AS_PARITY_PREDICTOR",
           "TOKEN", "LabelStudio", "Nginx", "Served", "SlowClients", "free_port", "in_ci", "keypoint", "label_studio_env", "label_studio_executable",
           "nginx_binary", "predict_body", "random_image", "rectangle", "replica_config", "require", "serve",
           "start_label_studio", "wait_for_prediction"]

# A served model whose masks are compared pixel for pixel with the `parity_predictor` fixture (fp32 of the engine
# `auto` picks): the same precision, since on a CPU with native bf16 `auto` would serve bf16.
SAME_ARITHMETIC_AS_PARITY_PREDICTOR = {"TINYSAM_PRECISION": "fp32"}

# Random-weight models predict low IoUs and unstable masks: let everything-mode masks through its filters.
EVERYTHING_TEST_ENV = {"TINYSAM_LS_BATCH_POINTS_PER_SIDE": "4", "TINYSAM_LS_BATCH_PRED_IOU_THRESH": "0.0",
                       "TINYSAM_LS_BATCH_STABILITY_SCORE_THRESH": "0.0", "TINYSAM_LS_BATCH_HIGH_SCORE_THRESH": "0.12",
                       "TINYSAM_LS_BATCH_MIN_AREA": "0.0", "TINYSAM_LS_BATCH_MAX_REGIONS": "5"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (or fail under CI) when a required external resource is missing."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)
