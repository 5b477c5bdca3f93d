"""Unit tests of each network part on tiny random configs (seconds)."""

from __future__ import annotations

import pytest
import torch

from tinysam_backend.modeling import VARIANTS, build_sam
from tinysam_backend.modeling.image_encoder_tinyvit import TinyViTBlock, WindowAttention
from tinysam_backend.modeling.prompt_encoder import PositionEmbeddingRandom, PromptEncoder


def test_tiny_tinyvit_encoder_shape(tiny_model):
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = tiny_model.encode_image(x)
    assert out.shape == (2, 32, 16, 16)


def test_tiny_vit_encoder_shape():
    model = build_sam("tiny_test_b")
    with torch.no_grad():
        out = model.encode_image(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 32, 16, 16)


@pytest.mark.parametrize("variant,blocks,params_m", [("vit_t", None, (5.0, 11.0)), ("vit_b", 12, (85, 95))])
def test_registry_variants_are_data(variant, blocks, params_m):
    model = build_sam(variant)
    n = sum(p.numel() for p in model.image_encoder.parameters()) / 1e6
    assert params_m[0] < n < params_m[1]
    if blocks:
        assert len(model.image_encoder.blocks) == blocks == VARIANTS[variant].encoder.depth


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model variant 'vit_x'"):
        build_sam("vit_x")


def test_window_padding_keeps_tokens_independent_of_padding():
    """A window block on a grid that does not divide by the window must only see real tokens."""
    torch.manual_seed(0)
    blk = TinyViTBlock(dim=8, resolution=9, num_heads=2, window=7, mlp_ratio=2.0).eval()
    x = torch.randn(1, 81, 8)
    with torch.no_grad():
        y = blk(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_window_attention_bias_is_shared_by_equal_offsets():
    attn = WindowAttention(dim=4, num_heads=1, window=3)
    idx = attn.attention_bias_idxs
    # offset (0,0) for the diagonal; (0,1) between horizontal neighbours either way
    assert (idx.diagonal() == idx[0, 0]).all()
    assert idx[0, 1] == idx[1, 0] == idx[4, 3]
    assert idx.max() + 1 == attn.attention_biases.shape[1] == 9


def test_prompt_encoder_padding_point_and_box():
    enc = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256))
    pts = torch.tensor([[[10.0, 20.0]]])
    lab = torch.tensor([[1]])
    sparse, dense = enc((pts, lab), None, None)
    assert sparse.shape == (1, 2, 32)  # point + padding "not a point"
    torch.testing.assert_close(sparse[0, 1], enc.not_a_point_embed.weight[0])
    sparse, _ = enc((pts, lab), torch.tensor([[0.0, 0.0, 100.0, 50.0]]), None)
    assert sparse.shape == (1, 3, 32)  # no padding when a box is present
    assert dense.shape == (1, 32, 16, 16)
    _, dense = enc(None, None, torch.zeros(1, 1, 64, 64))
    assert dense.shape == (1, 32, 16, 16)


def test_positional_encoding_is_bounded_fourier_features():
    pe = PositionEmbeddingRandom(8)
    grid = pe((4, 4))
    assert grid.shape == (16, 4, 4)
    assert grid.abs().max() <= 1.0 + 1e-6


def test_decoder_returns_three_masks_and_tokens(tiny_model):
    emb = torch.randn(1, 32, 16, 16)
    pts = (torch.tensor([[[30.0, 40.0], [100.0, 120.0]]]).repeat(3, 1, 1), torch.tensor([[1, 0]]).repeat(3, 1))
    with torch.no_grad():
        low, iou = tiny_model.decode(emb, pts)
        sparse, dense = tiny_model.prompt_encoder(pts, None, None)
        low2, iou2, tokens = tiny_model.mask_decoder(emb, tiny_model.prompt_encoder.get_dense_pe(), sparse, dense,
                                                     return_tokens=True)
    assert low.shape == (3, 3, 64, 64) and iou.shape == (3, 3)
    assert tokens.shape == (3, 1 + 4 + 3, 32)
    torch.testing.assert_close(low, low2)
