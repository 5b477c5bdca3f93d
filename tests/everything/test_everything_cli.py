"""`tinysam everything IMAGE --mode ... --out DIR` writes masks.json (COCO RLE) and overlay.png."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tinysam_backend.cli import main
from tinysam_backend.masks import decode_rle


@pytest.mark.parametrize("mode", ["hierarchical", "dense"])
def test_everything_cli(tmp_path, tiny_model, mode):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), ckpt)
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[10:30, 20:50] = 220
    Image.fromarray(img).save(tmp_path / "img.png")
    out = tmp_path / "out"
    rc = main(["everything", str(tmp_path / "img.png"), "--mode", mode, "--out", str(out), "--checkpoint", str(ckpt),
               "--variant", "tiny_test_t", "--points-per-side", "8", "--pred-iou-thresh", "0",
               "--stability-score-thresh", "0", "--high-score-thresh", "0.5"])
    assert rc == 0
    doc = json.loads((out / "masks.json").read_text())
    assert doc["size"] == [48, 64] and doc["params"]["mode"] == mode and doc["num_masks"] == len(doc["annotations"])
    assert doc["num_masks"] > 0
    for ann in doc["annotations"]:
        assert decode_rle(ann["segmentation"]).shape == (48, 64)
    with Image.open(out / "overlay.png") as overlay:
        assert overlay.size == (64, 48)


def test_everything_cli_rejects_bad_params(tmp_path, capsys):
    rc = main(["everything", str(tmp_path / "missing.png"), "--out", str(tmp_path), "--points-per-side", "2"])
    assert rc == 2 and "points_per_side" in capsys.readouterr().err
