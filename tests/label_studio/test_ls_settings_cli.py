"""LabelStudioSettings.from_env, `tinysam serve` (argv, fail-fast on bad settings), gunicorn thread sizing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tinysam_backend.label_studio.cli import gunicorn_argv
from tinysam_backend.label_studio.gunicorn_conf import torch_threads_for
from tinysam_backend.label_studio.settings import LabelStudioSettings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def test_settings_from_env():
    s = LabelStudioSettings.from_env({
        "LABEL_STUDIO_URL": "http://ls:8080/", "LABEL_STUDIO_API_KEY": " key ", "LABEL_STUDIO_BASE_DATA_DIR": "/data",
        "TINYSAM_LS_ALLOWED_HOSTS": "Images.Example.com, *.cdn.net", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p",
        "TINYSAM_LS_BATCH_ENABLED": "no", "TINYSAM_LS_BATCH_PRED_IOU_THRESH": "0.5", "TINYSAM_LS_CACHE_BYTES": "1024"})
    assert s.label_studio_url == "http://ls:8080" and s.label_studio_api_key == "key"
    assert s.media_dir == Path("/data/media")
    assert s.allowed_hosts == ("images.example.com", "*.cdn.net")
    assert s.basic_auth == ("u", "p") and s.batch_enabled is False and s.cache_bytes == 1024
    assert s.everything_params() == {"pred_iou_thresh": 0.5}
    every = LabelStudioSettings.from_env({"TINYSAM_LS_BATCH_MODE": " Dense ", "TINYSAM_LS_BATCH_POINTS_PER_SIDE": "2",
                                          "TINYSAM_LS_BATCH_MIN_MASK_REGION_AREA": "20"})
    assert every.everything_params() == {"mode": "dense", "points_per_side": 2, "min_mask_region_area": 20}
    assert LabelStudioSettings.from_env({}) == LabelStudioSettings()


@pytest.mark.parametrize("env, message", [
    ({"LABEL_STUDIO_URL": "ls:8080"}, "must start with http"),
    ({"BASIC_AUTH_USER": "u"}, "set together"),
    ({"TINYSAM_LS_CACHE_BYTES": "lots"}, "TINYSAM_LS_CACHE_BYTES must be an integer"),
    ({"TINYSAM_LS_FETCH_TIMEOUT": "inf"}, "finite number"),
    ({"TINYSAM_LS_MAX_BODY_BYTES": "10"}, ">= 1024"),
    ({"TINYSAM_LS_BATCH_ENABLED": "maybe"}, "true or false"),
    ({"TINYSAM_LS_BATCH_MIN_AREA": "1.5"}, "fraction"),
    ({"TINYSAM_LS_BATCH_POINTS_PER_SIDE": "lots"}, "TINYSAM_LS_BATCH_POINTS_PER_SIDE: points_per_side must be an integer"),
    ({"TINYSAM_LS_BATCH_PRED_IOU_THRESH": "5"}, r"TINYSAM_LS_BATCH_PRED_IOU_THRESH\): pred_iou_thresh must be in"),
    ({"TINYSAM_LS_BATCH_POINTS_PER_SIDE": "2"}, "points_per_side must be an integer >= 4 in hierarchical mode"),
    ({"TINYSAM_LS_BATCH_MODE": "grid"}, "mode must be one of"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        LabelStudioSettings.from_env(env)


def test_gunicorn_command_line():
    argv = gunicorn_argv("::1", 9090, 2, 3, 120, "info", request_timeout=2.5)
    assert argv[1:3] == ["-m", "gunicorn"]
    assert "[::1]:9090" in argv
    assert argv[-1] == "tinysam_backend.label_studio.bridge:create_asgi_app(threads=3, request_timeout=2.5)"
    assert "--preload" not in argv and "--threads" not in argv  # the app's pool has the threads, not gunicorn
    assert argv[argv.index("-c") + 1] == "python:tinysam_backend.label_studio.gunicorn_conf"


def test_gunicorn_loads_the_app_factory_with_its_arguments():
    """The app string goes through gunicorn's own loader: literal arguments reach the factory (nothing is loaded)."""
    from gunicorn.util import import_app

    from tinysam_backend.label_studio import gunicorn_conf
    from tinysam_backend.label_studio.bridge import WSGIBridge

    app = import_app(gunicorn_argv("127.0.0.1", 9090, 1, 3, 120, "info", request_timeout=2.5)[-1])
    assert isinstance(app, WSGIBridge) and app.threads == 3 and app.request_timeout == 2.5
    assert app.application.extensions["tinysam"].state == "idle"  # the model loads after fork, not here
    assert gunicorn_conf.worker_class == "tinysam_backend.label_studio.worker.DeadlineASGIWorker"


@pytest.mark.parametrize("value", ["0", "-1", "soon", "7200"])
def test_request_timeout_flag_is_checked(value, parity_checkpoint):
    r = subprocess.run([sys.executable, "-m", "tinysam_backend.cli", "serve", "--checkpoint", str(parity_checkpoint),
                        "--request-timeout", value], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "--request-timeout" in r.stderr and value in r.stderr


def test_torch_threads_share_the_cores():
    assert torch_threads_for(workers=2, configured=0, cores=8) == 4
    assert torch_threads_for(workers=4, configured=0, cores=2) == 1
    assert torch_threads_for(workers=1, configured=3, cores=2) == 3


def test_serve_fails_fast_on_bad_settings(parity_checkpoint):
    env = {"PATH": "/usr/bin:/bin", "TINYSAM_LS_FETCH_TIMEOUT": "soon", "HOME": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "tinysam_backend.cli", "serve", "--checkpoint", str(parity_checkpoint)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "TINYSAM_LS_FETCH_TIMEOUT must be a number" in r.stderr
