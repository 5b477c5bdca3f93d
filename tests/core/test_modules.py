"""Unit tests of each network part on tiny random configs (seconds).

Besides shapes, each test checks a property that follows from the part's definition: outputs of a batch equal the
outputs of its items alone, the encoders' last layer normalises every position, window attention sees only its own
window, Fourier features lie on the unit circle, prompt embeddings are the positional encoding plus the embedding of
the prompt kind.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tinysam_backend.modeling import VARIANTS, build_sam
from tinysam_backend.modeling.image_encoder_tinyvit import TinyViTBlock, WindowAttention, split_first_copy
from tinysam_backend.modeling.prompt_encoder import PositionEmbeddingRandom, PromptEncoder


def _assert_neck_normalised(model, out: torch.Tensor) -> None:
    """The neck ends in LayerNorm2d: at every position, (out - bias) / weight has channel mean 0 and variance 1."""
    norm = model.image_encoder.neck[-1]
    z = (out - norm.bias[:, None, None]) / norm.weight[:, None, None]
    torch.testing.assert_close(z.mean(1), torch.zeros_like(z.mean(1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(1, unbiased=False), torch.ones_like(z.mean(1)), atol=1e-3, rtol=0)


def test_tiny_tinyvit_encoder_shape(tiny_model):
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = tiny_model.encode_image(x)
        alone = tiny_model.encode_image(x[1:])
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-5)  # eval mode: images do not mix in a batch
    assert (out[0] - out[1]).abs().max() > 1e-2  # and different images give different embeddings
    _assert_neck_normalised(tiny_model, out)


def test_export_form_of_window_attention_gives_the_same_q_k_v_and_output(tiny_model):
    """`split_first_copy` (what the ONNX export traces) reorders each qkv layer's rows and splits before transposing:
    every attention sees the same q, k, v, the encoder gives the same embedding, the model itself is untouched."""
    encoder = tiny_model.image_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    export = split_first_copy(encoder)
    attns = [m for m in encoder.modules() if isinstance(m, WindowAttention)]
    copies = [m for m in export.modules() if isinstance(m, WindowAttention)]
    assert attns and len(attns) == len(copies) and all(m.qkv_split_first for m in copies)
    assert not any(m.qkv_split_first for m in attns)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    seen: dict[int, list[dict]] = {0: [], 1: []}
    for i, group in enumerate((attns, copies)):
        for m in group:
            m.observer = lambda store=seen[i], **kw: store.append({k: kw[k].clone() for k in ("q", "k", "v")})
    x = torch.randn(1, 3, 256, 256)
    try:
        with torch.no_grad():
            out, out_export = encoder(x), export(x)
    finally:
        for m in attns + copies:
            m.observer = None
    assert len(seen[0]) == len(seen[1]) == len(attns)
    for a, b in zip(seen[0], seen[1]):
        for key in ("q", "k", "v"):
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out_export, out, atol=1e-5, rtol=1e-5)


def test_tiny_vit_encoder_shape():
    torch.manual_seed(0)
    model = build_sam("tiny_test_b")
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = model.encode_image(x[:1])
        batch = model.encode_image(x)
    assert out.shape == (1, 32, 16, 16)
    torch.testing.assert_close(batch[:1], out, atol=1e-5, rtol=1e-5)
    _assert_neck_normalised(model, batch)


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
    """A window block on a grid that does not divide by the window (9 × 9, windows of 7) pads to whole windows
    (14 × 14) with zero tokens at the bottom and right: the same as the block on a grid zero-padded beforehand, and
    each window's tokens attend only to their own window."""
    torch.manual_seed(0)
    blk = TinyViTBlock(dim=8, resolution=9, num_heads=2, window=7, mlp_ratio=2.0).eval()
    x = torch.randn(1, 81, 8)
    with torch.no_grad():
        y = blk(x)
    assert y.shape == x.shape and torch.isfinite(y).all()

    # The same weights on a 14 × 14 grid (no padding needed) whose extra tokens are zeros: equal attention for the
    # real tokens; rows/columns 0..7 also see the same 3 × 3 local convolution input (row 8's neighbour differs:
    # zero padding of the convolution in one case, the pad token's attention output in the other).
    big = TinyViTBlock(dim=8, resolution=14, num_heads=2, window=7, mlp_ratio=2.0).eval()
    big.load_state_dict(blk.state_dict())
    x14 = torch.zeros(1, 14, 14, 8)
    x14[:, :9, :9] = x.view(1, 9, 9, 8)
    with torch.no_grad():
        y14 = big(x14.view(1, 196, 8)).view(1, 14, 14, 8)
    torch.testing.assert_close(y.view(1, 9, 9, 8)[:, :8, :8], y14[:, :8, :8], atol=1e-6, rtol=1e-6)

    # Tokens of the top-left window (rows and columns 0..6) away from its border (1..5, beyond the reach of the
    # 3 × 3 convolution) do not change when every token outside the window does, and do when one inside does.
    grid = x.view(1, 9, 9, 8)
    outside = grid.clone()
    outside[:, 7:] += torch.randn_like(outside[:, 7:])
    outside[:, :, 7:] += torch.randn_like(outside[:, :, 7:])
    inside = grid.clone()
    inside[:, 6, 6] += torch.randn(8)  # not a constant shift, which the layer norm would remove
    with torch.no_grad():
        y_out = blk(outside.view(1, 81, 8)).view(1, 9, 9, 8)
        y_in = blk(inside.view(1, 81, 8)).view(1, 9, 9, 8)
    core = (slice(None), slice(1, 6), slice(1, 6))
    torch.testing.assert_close(y_out[core], y.view(1, 9, 9, 8)[core], atol=1e-6, rtol=0)
    assert (y_in[:, 2, 2] - y.view(1, 9, 9, 8)[:, 2, 2]).abs().max() > 1e-4


def test_window_attention_bias_is_shared_by_equal_offsets():
    attn = WindowAttention(dim=4, num_heads=1, window=3)
    idx = attn.attention_bias_idxs
    # offset (0,0) for the diagonal; (0,1) between horizontal neighbours either way
    assert (idx.diagonal() == idx[0, 0]).all()
    assert idx[0, 1] == idx[1, 0] == idx[4, 3]
    assert idx.max() + 1 == attn.attention_biases.shape[1] == 9


def _fourier(gaussian: torch.Tensor, xy_normalised) -> np.ndarray:
    """SAM's random Fourier features, written out: [sin(2π (2c − 1) G), cos(2π (2c − 1) G)], in float64."""
    v = 2 * math.pi * (2 * np.asarray(xy_normalised, dtype=np.float64) - 1) @ gaussian.double().numpy()
    return np.concatenate([np.sin(v), np.cos(v)], axis=-1)


def test_prompt_encoder_padding_point_and_box():
    torch.manual_seed(0)
    enc = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256))
    for emb in list(enc.point_embeddings) + [enc.not_a_point_embed, enc.no_mask_embed]:
        torch.nn.init.normal_(emb.weight)  # distinct embeddings, so that a wrong one shows
    enc.requires_grad_(False)
    gauss = enc.pe_layer.positional_encoding_gaussian_matrix
    pts = torch.tensor([[[10.0, 20.0]]])
    lab = torch.tensor([[1]])
    sparse, dense = enc((pts, lab), None, None)
    assert sparse.shape == (1, 2, 32)  # point + padding "not a point"
    torch.testing.assert_close(sparse[0, 1], enc.not_a_point_embed.weight[0])
    # A foreground point: the encoding of its pixel centre plus the foreground embedding.
    expected = _fourier(gauss, [10.5 / 256, 20.5 / 256]) + enc.point_embeddings[1].weight[0].double().numpy()
    np.testing.assert_allclose(sparse[0, 0].double().numpy(), expected, atol=1e-5)
    # No mask: the "no mask" embedding at every position.
    assert dense.shape == (1, 32, 16, 16)
    torch.testing.assert_close(dense, enc.no_mask_embed.weight.view(1, 32, 1, 1).expand(1, 32, 16, 16))
    # A background point gets the background embedding instead.
    sparse_bg, _ = enc((pts, torch.tensor([[0]])), None, None)
    expected_bg = _fourier(gauss, [10.5 / 256, 20.5 / 256]) + enc.point_embeddings[0].weight[0].double().numpy()
    np.testing.assert_allclose(sparse_bg[0, 0].double().numpy(), expected_bg, atol=1e-5)

    sparse, _ = enc((pts, lab), torch.tensor([[0.0, 0.0, 100.0, 50.0]]), None)
    assert sparse.shape == (1, 3, 32)  # no padding when a box is present
    # Box corners: top-left and bottom-right pixel centres with their own embeddings (point_embeddings[2], [3]).
    corners = _fourier(gauss, [[0.5 / 256, 0.5 / 256], [100.5 / 256, 50.5 / 256]])
    corners[0] += enc.point_embeddings[2].weight[0].double().numpy()
    corners[1] += enc.point_embeddings[3].weight[0].double().numpy()
    np.testing.assert_allclose(sparse[0, 1:].double().numpy(), corners, atol=1e-5)

    mask = torch.randn(1, 1, 64, 64)
    _, dense = enc(None, None, mask)
    assert dense.shape == (1, 32, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dense, enc.mask_downscaling(mask))
    assert (dense - enc.no_mask_embed.weight.view(1, 32, 1, 1)).abs().max() > 1e-3


def test_positional_encoding_is_bounded_fourier_features():
    torch.manual_seed(0)
    pe = PositionEmbeddingRandom(8)
    grid = pe((4, 6))
    assert grid.shape == (16, 4, 6)
    assert grid.abs().max() <= 1.0 + 1e-6
    # Each frequency is a (sin, cos) pair: on the unit circle.
    torch.testing.assert_close(grid[:8] ** 2 + grid[8:] ** 2, torch.ones(8, 4, 6), atol=1e-5, rtol=0)
    # Cell (i, j) is encoded at its centre ((j + 0.5) / W, (i + 0.5) / H).
    ii, jj = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    centres = np.stack([(jj + 0.5) / 6, (ii + 0.5) / 4], axis=-1)  # (4, 6, 2) XY
    expected = _fourier(pe.positional_encoding_gaussian_matrix, centres).transpose(2, 0, 1)
    np.testing.assert_allclose(grid.double().numpy(), expected, atol=1e-5)
    # A point at a cell centre, in pixels of a 64 × 96 image, is encoded like that cell.
    point = torch.tensor([[[(4 + 0.5) * 16, (1 + 0.5) * 16]]])
    torch.testing.assert_close(pe.forward_with_coords(point, (64, 96))[0, 0], grid[:, 1, 4], atol=1e-5, rtol=0)


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
    torch.testing.assert_close(iou, iou2)
    # Prompts in a batch are decoded independently: each row equals that prompt decoded alone.
    other = (torch.tensor([[[200.0, 10.0], [5.0, 250.0]]]), torch.tensor([[1, 1]]))
    mixed = (torch.cat([pts[0][:1], other[0]]), torch.cat([pts[1][:1], other[1]]))
    with torch.no_grad():
        low_mixed, iou_mixed = tiny_model.decode(emb, mixed)
        low_other, iou_other = tiny_model.decode(emb, other)
    torch.testing.assert_close(low_mixed[:1], low[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low_mixed[1:], low_other, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou_mixed[1:], iou_other, atol=1e-5, rtol=1e-5)
    assert (low_other - low[:1]).abs().max() > 1e-3  # a different prompt gives different masks
    # The three outputs are the multimask tokens (1..3); the single-mask token 0 is dropped.
    with torch.no_grad():
        single = tiny_model.mask_decoder.iou_prediction_head(tokens[:, 0])
    torch.testing.assert_close(iou, single[:, 1:])
