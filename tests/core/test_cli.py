"""`tinysam segment` and `tinysam weights` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tinysam_backend.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_segment_writes_masks_overlay_and_json(parity_checkpoint, parity_images, tmp_path):
    img = tmp_path / "coffee.png"
    Image.fromarray(parity_images["coffee"]).save(img)
    out = tmp_path / "out"
    res = _run("segment", str(img), "--point", "300,200", "--point", "100,100,0", "--box", "50,50,500,350",
               "--checkpoint", str(parity_checkpoint), "--out", str(out))
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "result.json").read_text())
    assert len(result["scores"]) == 3 and result["prompt"]["labels"] == [1, 0]
    for name in result["masks"]:
        m = np.asarray(Image.open(out / name))
        assert m.shape == (400, 600) and set(np.unique(m)) <= {0, 255}
    assert Image.open(out / "overlay.png").size == (600, 400)


def test_segment_bad_point_is_a_usage_error(tmp_path):
    res = _run("segment", "x.png", "--point", "1,2,7", "--out", str(tmp_path))
    assert res.returncode == 2 and "LABEL must be 1" in res.stderr


def test_segment_without_checkpoint_explains_both_ways(tmp_path, parity_images):
    import os

    img = tmp_path / "a.png"
    Image.fromarray(parity_images["coffee"][:50, :50]).save(img)
    env = {k: v for k, v in os.environ.items() if k != "TINYSAM_CHECKPOINT"}
    env["TINYSAM_CACHE_DIR"] = str(tmp_path / "cache")
    res = _run("segment", str(img), "--point", "5,5", "--out", str(tmp_path / "o"), env=env)
    assert res.returncode == 2
    assert "tinysam weights fetch" in res.stderr and "TINYSAM_CHECKPOINT" in res.stderr


def test_weights_list():
    res = _run("weights", "list")
    assert res.returncode == 0 and "tinysam_42.3" in res.stdout
