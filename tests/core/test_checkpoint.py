"""Checkpoint loading: layouts, variant detection, mismatch messages, refusal of pickled modules."""

from __future__ import annotations

import pickle

import pytest
import torch

from tinysam_backend import load_model
from tinysam_backend.checkpoint import detect_variant
from tinysam_backend.config import Settings
from tinysam_backend.errors import CheckpointError, MissingCheckpointError
from tinysam_backend.modeling import build_sam


@pytest.fixture(scope="module")
def vit_t_state():
    torch.manual_seed(0)
    return build_sam("vit_t").state_dict()


def test_detects_tinysam_and_vit_variants(vit_t_state):
    assert detect_variant(vit_t_state) == "vit_t"
    fake_vit_l = {f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)}
    assert detect_variant(fake_vit_l) == "vit_l"
    with pytest.raises(CheckpointError, match="cannot detect"):
        detect_variant({"foo": torch.zeros(1)})


def test_roundtrip_pth_and_safetensors(tmp_path, vit_t_state):
    from safetensors.torch import save_file

    torch.save({"model": vit_t_state}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in vit_t_state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("wrapped.pth", "w.safetensors"):
        model = load_model(tmp_path / name)
        assert model.variant == "vit_t"
        torch.testing.assert_close(model.state_dict()["mask_decoder.iou_token.weight"],
                                   vit_t_state["mask_decoder.iou_token.weight"])


def test_partial_checkpoint_names_missing_keys(tmp_path, vit_t_state):
    sd = dict(vit_t_state)
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra.weight"] = torch.zeros(1)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 8)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "mask_decoder.iou_token.weight" in msg and "mask_decoder.extra.weight" in msg
    assert "prompt_encoder.no_mask_embed.weight: checkpoint (1, 8) vs model (1, 256)" in msg


class _WholeModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


def test_pickled_module_is_refused_with_advice(tmp_path):
    torch.save(_WholeModule(), tmp_path / "tinysam_w8a8.pth")
    with pytest.raises(CheckpointError, match="tinysam quantize"):
        load_model(tmp_path / "tinysam_w8a8.pth")


def test_garbage_file(tmp_path):
    (tmp_path / "x.pth").write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "x.pth")


def test_missing_checkpoint_says_both_ways(tmp_path):
    settings = Settings(checkpoint=None, cache_dir=tmp_path)
    with pytest.raises(MissingCheckpointError) as e:
        load_model(None, settings=settings)
    assert "tinysam weights fetch" in str(e.value) and "TINYSAM_CHECKPOINT" in str(e.value)


def test_configured_default_is_used(parity_checkpoint, tmp_path):
    model = load_model(None, settings=Settings(checkpoint=str(parity_checkpoint), cache_dir=tmp_path))
    assert model.variant == "vit_t"


def test_the_environment_enters_only_through_settings(parity_checkpoint, monkeypatch):
    """The loader takes its configuration as an argument: TINYSAM_CHECKPOINT counts once read by `from_env`."""
    from tinysam_backend.checkpoint import resolve_checkpoint

    monkeypatch.setenv("TINYSAM_CHECKPOINT", str(parity_checkpoint))
    with pytest.raises(MissingCheckpointError):
        resolve_checkpoint(None)
    assert resolve_checkpoint(None, Settings.from_env()) == parity_checkpoint


@pytest.mark.parametrize("content", [bytes(range(256)) * 16, b"hello, not a checkpoint at all\n", b""],
                         ids=["random-bytes", "text", "empty"])
def test_not_a_checkpoint_is_named_as_such(tmp_path, content):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as e:
        load_model(tmp_path / "x.pth")
    assert "pickled" not in str(e.value)


def test_a_pickle_that_is_not_a_state_dict_is_not_called_a_module(tmp_path):
    (tmp_path / "x.pth").write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as e:
        load_model(tmp_path / "x.pth")
    assert "pickled Python object" not in str(e.value)
