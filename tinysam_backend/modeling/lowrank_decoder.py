"""SAM's mask decoder, exact, with the image-side work done once per image and the per-prompt work low-rank.

Why it is exact. In SAM's two-way transformer the image tokens of every prompt start from the same F (image
embedding plus the "no mask" embedding), and each layer changes them only by

    Z = X + A Ṽ + b_o        (image-to-token attention: A = softmax weights over the T prompt tokens, per head)
    X' = LayerNorm(Z)

where A is N × (heads·T) and Ṽ (heads·T) × C comes from the T tokens. So, per prompt, the image tokens stay

    X = dd ⊙ (F + Lᵀ R)      (dd: one scale per image token; F: N × C, the same for every prompt;
                              Lᵀ: N × r and R: r × C, r ≈ 50 per layer for a click)

with F the image embedding with the layer norms' gains applied. Every projection of X is then
dd ⊙ (F W + Lᵀ (R W)): F W is computed once per image (`ImageContext`), Lᵀ (R W) costs N·r per output column
instead of N·C, and attention against the T prompt tokens is folded into the small side. Layer-norm
statistics come from the same form: mean = mean(F) + mean(R)·L and |F + Lᵀ R|² = |F|² + 2 L·(F Rᵀ) + L·(R Rᵀ L),
where F Rᵀ is again precomputed through the out-projection (F W_o, per block) and small per-prompt factors.

The softmax weights of each head sum to one over the T tokens, so the last token's row of every head is
folded into one shared constant row (with the out-projection bias): a layer adds heads·(T − 1) + 1 rows, not
heads·T + 1. A mask prompt (SAM's `mask_input`) is a low-rank start as well: the mask branch ends in a 1 × 1
convolution from 16 channels, so its dense embedding is F minus the "no mask" embedding plus a rank-17 term.

Two more savings, also exact: the last token-to-image attention only for the tokens whose outputs are used
(IoU token and the three multimask tokens; in the everything mode first the IoU token alone), and the mask
tokens' last attention and the upscaling heads only for prompts with a mask asked for (the everything mode's
point decoder, `everything/decoders.py`, runs them after its IoU filter, and only over the token rows that its
crop to the image reads: `masks(..., rows=)`); a click (`decode(..., best_only=True)`) runs the
hypernetwork and the last product for its highest-IoU mask only. The heads run as matrix
products in a pixel-major layout, so the 32-channel output is reduced by the hypernetwork before any
reshuffling. Results equal `Sam.decode` up to float32 rounding (tests/core/test_lowrank_decoder.py).

Layouts: L is kept as (B, r, N) (one row per rank, image tokens contiguous), attention scores as
(B, heads, T, N), per-head precomputed products as (heads, N, d) or (heads, d, N). For one prompt the
per-head products are one bmm over the heads (the (B, H·T, N) layout is then (H, T, N)); for a batch, one bmm
per head writes them batch-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .common import LayerNorm2d
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

# Prompts whose mask heads (two transposed convolutions at 128² and 256²) run at once.
HEAD_CHUNK = 8
# Image-token rows (tokens × prompts) per block of the mask heads: 512 keeps a block's intermediates (0.5 to 1 MiB
# each) in a core's L2 cache.
HEAD_ROWS = 512


def unsupported_reason(model) -> str | None:
    """None when `model` is an fp32 `Sam` whose decoder this module understands, else why not."""
    if not isinstance(model, Sam):
        return f"model is a {type(model).__name__}, not a Sam"
    dec = getattr(model, "mask_decoder", None)
    if not isinstance(dec, MaskDecoder) or not isinstance(getattr(model, "prompt_encoder", None), PromptEncoder):
        return "model has no standard prompt encoder / mask decoder"
    if not isinstance(dec.transformer, TwoWayTransformer):
        return "mask decoder transformer is not a TwoWayTransformer"
    for name, p in list(dec.named_parameters()) + list(model.prompt_encoder.named_parameters()):
        if p.dtype != torch.float32:
            return f"parameter {name} is {p.dtype}, not float32"
    tr = dec.transformer
    for layer in list(tr.layers) + [None]:
        attns = [tr.final_attn_token_to_image] if layer is None else [layer.cross_attn_token_to_image,
                                                                       layer.cross_attn_image_to_token]
        for attn in attns:
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                if type(lin) is not nn.Linear:
                    return f"attention projection is a {type(lin).__name__}, not nn.Linear"
        if layer is not None and type(layer.norm4) is not nn.LayerNorm:
            return "image-token norm is not nn.LayerNorm"
    up = dec.output_upscaling
    if (len(up) != 5 or type(up[0]) is not nn.ConvTranspose2d or type(up[3]) is not nn.ConvTranspose2d
            or not isinstance(up[1], LayerNorm2d)
            or any(tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2) for conv in (up[0], up[3]))):
        return "output upscaling is not ConvT(2, 2) → LayerNorm2d → act → ConvT(2, 2) → act"
    last = model.prompt_encoder.mask_downscaling[-1]
    if type(last) is not nn.Conv2d or tuple(last.kernel_size) != (1, 1) or last.bias is None:
        return "the mask branch does not end in a 1 × 1 convolution"
    return None


def _per_head_t(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, heads·d) → (heads, d, N) contiguous: the right-hand side of (·, d) @ (d, N) products, row-major."""
    n, c = x.shape
    return x.T.reshape(heads, c // heads, n).contiguous()


def _per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, heads·d) → (heads, N, d) contiguous."""
    n, c = x.shape
    return x.view(n, heads, c // heads).transpose(0, 1).contiguous()


def _scores(x: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Per-head products x (B, T, H, d) · rhs (H, d, N) → (B, H·T, N): one bmm over the heads for one prompt, else
    written batch-major by one bmm per head."""
    b, t, h, d = x.shape
    n = rhs.shape[-1]
    if b == 1:
        return torch.bmm(x[0].transpose(0, 1), rhs).view(1, h * t, n)
    out = torch.empty((b, h, t, n), device=x.device)
    for i in range(h):
        torch.bmm(x[:, :, i], rhs[i].expand(b, d, n), out=out[:, i])
    return out.view(b, h * t, n)


def _weighted_values(p: torch.Tensor, value: torch.Tensor, t: int) -> torch.Tensor:
    """Per-head p (B, H·T, N) · value (H, N, d) → (B, T, H, d)."""
    b, _, n = p.shape
    h, _, d = value.shape
    if b == 1:
        return torch.bmm(p[0].view(h, t, n), value).transpose(0, 1).unsqueeze(0)
    out = torch.empty((b, t, h, d), device=p.device)
    for i in range(h):
        torch.bmm(p[:, i * t:(i + 1) * t], value[i].expand(b, n, d), out=out[:, :, i])
    return out


@dataclass
class _Stage:
    """Prompt-independent image side of one transformer layer (or of the final attention)."""

    base_mean: torch.Tensor  # (N,) row means of F
    base_sq: torch.Tensor  # (N,) row squared norms of F
    key: torch.Tensor  # (H, d, N) F W_k of token→image attention
    pe_key: torch.Tensor  # (H, d, N) P W_k + b_k
    value: torch.Tensor  # (H, N, d) F W_v
    query: torch.Tensor | None = None  # (H, d, N) F W_q of image→token attention
    pe_query: torch.Tensor | None = None  # (H, d, N) P W_q + b_q
    # First layer only: key + pe_key and query + pe_query, the whole projection while the image tokens are F.
    key_with_pe: torch.Tensor | None = None
    query_with_pe: torch.Tensor | None = None
    # For the layer norm after image→token attention, per block of R in row order: ("attn", (H, d, N) products
    # F diag(s) W_o, (N,) product F (s ⊙ b_o)) or ("vec", (m, N) products F Vᵀ).
    block_products: list | None = None
    mask_products: torch.Tensor | None = None  # (17, N): F (rows of the mask prompt's start)ᵀ

    def tensors(self) -> list[torch.Tensor]:
        out = [self.base_mean, self.base_sq, self.key, self.pe_key, self.value]
        out += [t for t in (self.query, self.pe_query, self.mask_products, self.key_with_pe, self.query_with_pe)
                if t is not None]
        for block in self.block_products or []:
            out += list(block[1:])
        return out


class ImageContext:
    """Everything about one image embedding that does not depend on the prompt: 41 MiB (`nbytes` = 42,994,176 bytes)
    for TinySAM's 64 × 64 × 256 embedding (`benchmarks/core_bench.py` prints it)."""

    def __init__(self, model, features: torch.Tensor) -> None:
        dec = model.mask_decoder
        pe = model.prompt_encoder
        tr = dec.transformer
        c = dec.transformer_dim
        with torch.inference_mode():
            self.device = pe.no_mask_embed.weight.device  # the decoder's device: every tensor here lives on it
            feats = features.to(self.device).float()
            if feats.dim() != 4 or feats.shape[0] != 1 or feats.shape[1] != c:
                raise ValueError(f"features must be (1, {c}, h, w), got {tuple(feats.shape)}")
            self.grid = (int(feats.shape[-2]), int(feats.shape[-1]))
            no_mask = pe.no_mask_embed.weight.reshape(-1)
            src = feats + no_mask.reshape(1, -1, 1, 1)
            x0 = src.flatten(2)[0].transpose(0, 1).contiguous()  # (N, C)
            pos = pe.get_dense_pe().flatten(2)[0].transpose(0, 1).contiguous()  # (N, C)
            if pos.shape != x0.shape:
                raise ValueError(f"positional encoding {tuple(pos.shape)} does not match the embedding "
                                 f"{tuple(x0.shape)}")
            self.n, self.c = x0.shape
            # A mask prompt starts the image tokens at F + Gᵀ M: G the mask branch's last 16 channels, M the rows
            # of its 1 × 1 convolution, and one constant row (its bias minus the "no mask" embedding).
            conv = pe.mask_downscaling[-1]
            mask_rows = torch.cat([conv.weight[:, :, 0, 0].T, (conv.bias - no_mask)[None]])  # (17, C)
            self.mask_rank = int(mask_rows.shape[0])
            self.mask_rows = mask_rows.clone()
            base = x0
            blocks: list = []  # ["attn", layer index, column scale (C,)] or ["vec", rows (m, C)]
            self.stages: list[_Stage] = []
            for i, layer in enumerate(tr.layers):
                t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
                stage = _Stage(
                    base_mean=base.mean(1), base_sq=(base * base).sum(1),
                    key=_per_head_t(base @ t2i.k_proj.weight.T, t2i.num_heads),
                    pe_key=_per_head_t(pos @ t2i.k_proj.weight.T + t2i.k_proj.bias, t2i.num_heads),
                    value=_per_head(base @ t2i.v_proj.weight.T, t2i.num_heads),
                    query=_per_head_t(base @ i2t.q_proj.weight.T, i2t.num_heads),
                    pe_query=_per_head_t(pos @ i2t.q_proj.weight.T + i2t.q_proj.bias, i2t.num_heads),
                    mask_products=(base @ mask_rows.T).T.contiguous(),
                )
                if i == 0:
                    stage.key_with_pe = stage.key + stage.pe_key
                    stage.query_with_pe = stage.query + stage.pe_query
                blocks.append(["attn", i, torch.ones(c, device=self.device)])
                products = []
                for blk in blocks:
                    if blk[0] == "attn":
                        attn = tr.layers[blk[1]].cross_attn_image_to_token
                        scaled = base * blk[2]
                        products.append(("attn", _per_head_t(scaled @ attn.out_proj.weight, attn.num_heads),
                                         scaled @ attn.out_proj.bias))
                    else:
                        products.append(("vec", (base @ blk[1].T).T.contiguous()))
                stage.block_products = products
                self.stages.append(stage)
                gamma, beta = layer.norm4.weight, layer.norm4.bias
                for blk in blocks:
                    if blk[0] == "attn":
                        blk[2] = blk[2] * gamma
                    else:
                        blk[1] = blk[1] * gamma
                blocks.append(["vec", torch.stack([gamma, beta])])
                mask_rows = mask_rows * gamma
                base = base * gamma
            fin = tr.final_attn_token_to_image
            self.final = _Stage(
                base_mean=base.mean(1), base_sq=(base * base).sum(1),
                key=_per_head_t(base @ fin.k_proj.weight.T, fin.num_heads),
                pe_key=_per_head_t(pos @ fin.k_proj.weight.T + fin.k_proj.bias, fin.num_heads),
                value=_per_head(base @ fin.v_proj.weight.T, fin.num_heads))
            # Upscaling convolutions as per-pixel matrices with outputs ordered (i, j, channel).
            conv1, _, _, conv2, _ = dec.output_upscaling
            self.up1_weight = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)  # (C, 2·2·C/4)
            self.up1_bias = conv1.bias.repeat(4)
            self.up1_base = base @ self.up1_weight  # (N, 2·2·C/4)
            self.up2_weight = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1)  # (C/4, 2·2·C/8)
            self.up2_bias = conv2.bias.repeat(4)

    @property
    def nbytes(self) -> int:
        tensors = [t for stage in self.stages + [self.final] for t in stage.tensors()]
        tensors += [self.mask_rows, self.up1_weight, self.up1_bias, self.up1_base, self.up2_weight, self.up2_bias]
        return sum(t.numel() * t.element_size() for t in tensors)


class ImageTokens:
    """Per-prompt image tokens X = dd ⊙ (F + L[:, :r]ᵀ R[:, :r]); dd None while X = F (r = 0)."""

    def __init__(self, b: int, rank: int, n: int, c: int, device: torch.device) -> None:
        self.dd: torch.Tensor | None = None  # (B, N)
        self.L = torch.empty((b, rank, n), device=device)
        self.R = torch.empty((b, rank, c), device=device)
        self.r = 0
        self.has_mask = False
        self.v_tokens: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: folded (B, H, T-1, d), last (B, H, d)

    @property
    def Lr(self) -> torch.Tensor:
        return self.L[:, : self.r]

    @property
    def Rr(self) -> torch.Tensor:
        return self.R[:, : self.r]

    def take(self, sel: torch.Tensor) -> ImageTokens:
        """The tokens of the prompts `sel` (an index tensor over B), for running the heads on a subset."""
        out = ImageTokens.__new__(ImageTokens)
        out.dd, out.L, out.R, out.r, out.v_tokens, out.has_mask = self.dd[sel], self.Lr[sel], self.Rr[sel], self.r, [], False
        return out


class LowRankDecoder:
    """`Sam.decode` for prompts on one image embedding, through a prompt-independent `ImageContext`.

    `decode(points, boxes, mask_input)` is called like `Sam.decode` (input-frame tensors). The pieces it is built
    from — `layers`, `final`, `hypernetworks`, `masks` — are public for the everything mode's point decoder
    (`everything.decoders.LowRankPointDecoder`), which asks for IoUs first and for mask logits later.
    """

    def __init__(self, model, features: torch.Tensor | None = None, context: ImageContext | None = None) -> None:
        if context is None:
            if features is None:
                raise ValueError("give the image features or a prebuilt ImageContext")
            context = ImageContext(model, features)
        self.model = model
        self.ctx = context

    # ------------------------------------------------------------------ attention pieces
    @staticmethod
    def _image_scores(proj: nn.Linear, x: torch.Tensor, base: torch.Tensor, pe: torch.Tensor,
                      tok: ImageTokens, base_with_pe: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, H·T, N) of prompt-side x (B, T, H, d), already scaled, against the image tokens projected by
        `proj`: x · (dd ⊙ (F + Lᵀ R) W + P W + b)ᵀ, with F W = `base` and P W + b = `pe` (H, d, N) precomputed."""
        if tok.dd is None:
            return _scores(x, base + pe if base_with_pe is None else base_with_pe)
        b, t, h, d = x.shape
        r_proj = (tok.Rr @ proj.weight.T).view(b, -1, h, d)  # (B, r, H, d)
        m = torch.einsum("brhd,bthd->bhtr", r_proj, x).reshape(b, h * t, -1)  # (B, H·T, r)
        lowrank = _scores(x, base).baddbmm_(m, tok.Lr)
        scores = _scores(x, pe)
        return scores.addcmul_(lowrank, tok.dd[:, None, :])

    def _token_to_image(self, attn, stage: _Stage, tok: ImageTokens, q_in: torch.Tensor) -> torch.Tensor:
        """attn(q = q_in, k = X + P, v = X) for prompt tokens q_in (B, T, C) → (B, T, C)."""
        b, t, _ = q_in.shape
        h = attn.num_heads
        q = attn.q_proj(q_in)
        d = q.shape[-1] // h
        scores = self._image_scores(attn.k_proj, q.view(b, t, h, d) / math.sqrt(d), stage.key, stage.pe_key, tok,
                                    stage.key_with_pe)
        p = scores.softmax(dim=-1)  # (B, H·T, N)
        del scores
        if tok.dd is not None:
            p.mul_(tok.dd[:, None, :])
        out = _weighted_values(p, stage.value, t)  # (B, T, H, d)
        if tok.dd is not None:
            pl = torch.bmm(p, tok.Lr.transpose(1, 2)).view(b, h, t, -1)  # (B, H, T, r)
            rv = (tok.Rr @ attn.v_proj.weight.T).view(b, -1, h, d)  # (B, r, H, d)
            out = out + torch.einsum("bhtr,brhd->bthd", pl, rv)
        return attn.out_proj(out.reshape(b, t, h * d) + attn.v_proj.bias)

    def _image_to_token(self, attn, norm: nn.LayerNorm, stage: _Stage, tok: ImageTokens, queries: torch.Tensor,
                        query_pe: torch.Tensor) -> None:
        """X ← norm(X + attn(q = X + P, k = queries + query_pe, v = queries)), kept in low-rank form."""
        b, t, c = queries.shape
        h = attn.num_heads
        k = attn.k_proj(queries + query_pe)
        d = k.shape[-1] // h
        v = attn.v_proj(queries).view(b, t, h, d)
        scores = self._image_scores(attn.q_proj, k.view(b, t, h, d) / math.sqrt(d), stage.query, stage.pe_query,
                                    tok, stage.query_with_pe)
        n = scores.shape[-1]
        a = scores.view(b, h, t, n).softmax(dim=2)  # weights over the T tokens, per head
        del scores
        # Z = dd ⊙ (F + Lᵀ R) + Σ_{h,t} a[h,t] Ṽ[h,t] + b_o with Ṽ[h, t] = v[t, h] W_o,hᵀ. As Σ_t a[h, t] = 1:
        #   = dd ⊙ (F + [L; a[:, :T-1]/dd; 1/dd]ᵀ [R; Ṽ[:, :T-1] - Ṽ[:, T-1]; b_o + Σ_h Ṽ[h, T-1]]).
        r0, rows = tok.r, h * (t - 1)
        folded = tok.L[:, r0:r0 + rows].view(b, h, t - 1, n)
        if tok.dd is None:
            folded.copy_(a[:, :, : t - 1])
            tok.L[:, r0 + rows] = 1.0
        else:
            inv = 1.0 / tok.dd
            torch.mul(a[:, :, : t - 1], inv[:, None, None, :], out=folded)
            tok.L[:, r0 + rows] = inv
        del a
        wo = attn.out_proj.weight.view(c, h, d)
        v_last = v[:, t - 1]  # (B, H, d)
        v_folded = v[:, : t - 1] - v_last[:, None]  # (B, T-1, H, d)
        tok.R[:, r0:r0 + rows] = torch.einsum("bthd,chd->bhtc", v_folded, wo).reshape(b, rows, c)
        tok.R[:, r0 + rows] = attn.out_proj(v_last.reshape(b, h * d))
        tok.r = r0 + rows + 1
        tok.v_tokens.append((v_folded.permute(0, 2, 1, 3), v_last))
        self._layer_norm(norm, stage, tok)

    def _layer_norm(self, norm: nn.LayerNorm, stage: _Stage, tok: ImageTokens) -> None:
        """Apply LayerNorm to Z = dd ⊙ (F + Lᵀ R) without forming Z (statistics from F-side products)."""
        L, R = tok.Lr, tok.Rr
        b, r, n = L.shape
        c = R.shape[-1]
        # fr = F Rᵀ, (B, r, N), from the per-block products, in the row order of L.
        fr = torch.empty((b, r, n), device=L.device)
        row, attn_layer = 0, 0
        if tok.has_mask:
            fr[:, : stage.mask_products.shape[0]] = stage.mask_products
            row = stage.mask_products.shape[0]
        for kind, *prod in stage.block_products:
            if kind == "attn":
                per_head, bias = prod
                v_folded, v_last = tok.v_tokens[attn_layer]  # (B, H, T-1, d), (B, H, d)
                attn_layer += 1
                h, d, _ = per_head.shape
                t1 = v_folded.shape[2]
                if b == 1:
                    torch.bmm(v_folded[0], per_head, out=fr[0, row:row + h * t1].view(h, t1, n))
                else:
                    for i in range(h):
                        torch.bmm(v_folded[:, i], per_head[i].expand(b, d, n),
                                  out=fr[:, row + i * t1:row + (i + 1) * t1])
                row += h * t1
                torch.addmm(bias, v_last.reshape(b, h * d), per_head.view(h * d, n), out=fr[:, row])
                row += 1
            else:
                fr[:, row:row + prod[0].shape[0]] = prod[0]
                row += prod[0].shape[0]
        # |F + Lᵀ R|² per token = |F|² + Σ_r L (2 F Rᵀ + (R Rᵀ) L)
        fr.baddbmm_(torch.bmm(R, R.transpose(1, 2)), L, beta=2.0).mul_(L)
        sq = stage.base_sq + fr.sum(1)
        del fr
        mean = stage.base_mean + torch.bmm(R.mean(dim=2).unsqueeze(1), L).squeeze(1)  # (B, N)
        var = (sq / c - mean * mean).clamp_min_(0.0)
        if tok.dd is not None:
            var.mul_(tok.dd * tok.dd)
        dd = torch.rsqrt(var + norm.eps)
        if tok.dd is not None:
            dd.mul_(tok.dd)
        gamma, beta = norm.weight, norm.bias
        # LN(Z) = dd' ⊙ (F γ + Lᵀ (R γ) − mean γᵀ + (1/dd') βᵀ)
        tok.L[:, r] = -mean
        tok.L[:, r + 1] = 1.0 / dd
        tok.R[:, :r] *= gamma
        tok.R[:, r] = gamma
        tok.R[:, r + 1] = beta
        tok.r = r + 2
        tok.dd = dd

    # ------------------------------------------------------------------ transformer
    def _start(self, b: int, t: int, mask_input: torch.Tensor | None) -> ImageTokens:
        """Image tokens before the first layer: F, or F + the mask prompt's low-rank term."""
        layers = self.model.mask_decoder.transformer.layers
        rank = sum(layer.cross_attn_image_to_token.num_heads * (t - 1) + 3 for layer in layers)
        if mask_input is None:
            return ImageTokens(b, rank, self.ctx.n, self.ctx.c, self.ctx.device)
        ctx = self.ctx
        tok = ImageTokens(b, rank + ctx.mask_rank, ctx.n, ctx.c, ctx.device)
        branch = self.model.prompt_encoder.mask_downscaling
        g = branch[:-1](mask_input.to(ctx.device).float())  # (B, 16, h, w)
        if g.shape[-2:] != ctx.grid:
            raise ValueError(f"mask_input gives a {tuple(g.shape[-2:])} grid, the embedding is {ctx.grid}")
        m = ctx.mask_rank - 1
        tok.L[:, :m] = g.flatten(2)
        tok.L[:, m] = 1.0
        tok.R[:, : ctx.mask_rank] = ctx.mask_rows
        tok.r = ctx.mask_rank
        tok.dd = torch.ones((b, ctx.n), device=ctx.device)
        tok.has_mask = True
        return tok

    def layers(self, sparse: torch.Tensor, mask_input: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, ImageTokens]:
        """Sparse prompt embeddings (B, K, C) [+ mask_input (B, 1, 4h, 4w)] through the two-way layers →
        (tokens (B, T, C), their positional embedding (B, T, C), image tokens)."""
        dec = self.model.mask_decoder
        tr = dec.transformer
        point_embedding = torch.cat([dec.output_tokens(sparse.shape[0]), sparse.float()], dim=1)
        queries = point_embedding
        tok = self._start(point_embedding.shape[0], point_embedding.shape[1], mask_input)
        for i, layer in enumerate(tr.layers):
            queries = layer.self_attend(queries, point_embedding)
            queries = layer.norm2(queries + self._token_to_image(layer.cross_attn_token_to_image, self.ctx.stages[i],
                                                                 tok, queries + point_embedding))
            queries = layer.norm3(queries + layer.mlp(queries))
            self._image_to_token(layer.cross_attn_image_to_token, layer.norm4, self.ctx.stages[i], tok, queries,
                                 point_embedding)
        return queries, point_embedding, tok

    def final(self, queries: torch.Tensor, point_embedding: torch.Tensor, tok: ImageTokens) -> torch.Tensor:
        """The last token-to-image attention + norm for the given tokens (each token's output is its own)."""
        tr = self.model.mask_decoder.transformer
        out = self._token_to_image(tr.final_attn_token_to_image, self.ctx.final, tok, queries + point_embedding)
        return tr.norm_final_attn(queries + out)

    def decode(self, points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None, best_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """As `Sam.decode` on this image: input-frame prompts → low-res logits (B, 3, 4h, 4w), IoU (B, 3).

        best_only: logits (B, 1, 4h, 4w) of each prompt's highest-IoU mask only (ties: the first), what a click
        answers with; the mask heads then run for one mask per prompt instead of three."""
        dev = self.ctx.device
        if points is not None:
            points = (points[0].to(dev), points[1].to(dev))
        if boxes is not None:
            boxes = boxes.to(dev)
        with torch.inference_mode():
            sparse, _ = self.model.prompt_encoder(points, boxes, None)
            if sparse.shape[1] == 0:
                # A mask alone: SAM has no sparse token then; the general path needs at least one.
                raise ValueError("the low-rank decoder needs a point or box prompt")
            queries, point_embedding, tok = self.layers(sparse, mask_input)
            used = [0] + list(range(2, 1 + self.model.mask_decoder.num_mask_tokens))  # IoU + multimask tokens
            hs = self.final(queries[:, used], point_embedding[:, used], tok)
            iou = self.model.mask_decoder.iou_prediction_head(hs[:, 0])[:, 1:]
            which = iou.argmax(dim=1, keepdim=True) if best_only else None
            chunks = []
            for i in range(0, len(hs), HEAD_CHUNK):
                sel = slice(i, i + HEAD_CHUNK)
                hyper = self.hypernetworks(hs[sel, 1:], None if which is None else which[sel])
                part = tok if len(hs) <= HEAD_CHUNK else tok.take(torch.arange(i, min(i + HEAD_CHUNK, len(hs)),
                                                                                 device=dev))
                chunks.append(self.masks(hyper, part))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks), iou

    # ------------------------------------------------------------------ heads
    def hypernetworks(self, hs: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        """Hypernetwork outputs (B, k, C/8) of the multimask tokens' outputs hs (B, 3, C): all three (k = 3), or
        the ones at the multimask indices `which` (B, k)."""
        mlps = self.model.mask_decoder.output_hypernetworks_mlps
        if which is None:
            return torch.stack([mlps[i + 1](hs[:, i]) for i in range(hs.shape[1])], dim=1)
        out = torch.empty((*which.shape, mlps[1].layers[-1].out_features), device=hs.device)
        for i in which.unique().tolist():
            rows, cols = torch.nonzero(which == i, as_tuple=True)
            out[rows, cols] = mlps[i + 1](hs[rows, i])
        return out

    def masks(self, hyper: torch.Tensor, tok: ImageTokens, rows: int | None = None) -> torch.Tensor:
        """Low-res logits (B, k, 4h, 4w) of the masks whose hypernetwork outputs are hyper (B, k, C/8).

        The heads run over the image tokens in blocks of about `HEAD_ROWS` token-rows (all prompts together), so
        that each block's intermediates (first convolution, norm, activation, second convolution at 4× and 16× the
        block's rows) stay in cache; the whole-image intermediates are 8 MiB per prompt.

        rows: only the token-grid rows that give the first `rows` low-res rows (logits (B, k, 4·t, 4w), t =
        ⌈rows / 4⌉), for a caller that crops the padding away (the everything mode): the blocks that cover them are
        the same blocks, computed the same way, as for the whole grid, so their values are the same."""
        dec = self.model.mask_decoder
        ctx = self.ctx
        b, k, _ = hyper.shape
        gh, gw = ctx.grid
        gh = gh if rows is None else max(1, min(gh, -(-int(rows) // 4)))  # 4 low-res rows per token row
        used = gh * gw
        _, norm, act1, _, act2 = dec.output_upscaling
        c4 = norm.weight.shape[0]
        c8 = ctx.up2_weight.shape[1] // 4
        lt = tok.Lr.transpose(1, 2)  # (B, N, r)
        r_up = tok.Rr @ ctx.up1_weight  # (B, r, 4·C/4)
        step = max(1, HEAD_ROWS // b)
        starts = range(0, used, step)
        end = min(starts[-1] + step, ctx.n)  # the last block whole, as for the whole grid
        out = torch.empty((b, k, end * 16), device=hyper.device)  # (y, x, i1, j1, i2, j2) per mask
        for s in starts:
            e = min(s + step, ctx.n)
            # First transposed conv per image token, columns (i1, j1, channel): (B, e - s, 4·C/4).
            up = torch.baddbmm(ctx.up1_base[s:e].expand(b, -1, -1), lt[:, s:e], r_up)
            up.mul_(tok.dd[:, s:e, None]).add_(ctx.up1_bias)
            up = torch.nn.functional.layer_norm(up.view(-1, c4), (c4,), norm.weight, norm.bias, norm.eps)
            up = act1(up)  # (B·(e - s)·4, C/4), rows (b, y, x, i1, j1)
            up = act2(torch.addmm(ctx.up2_bias, up, ctx.up2_weight))  # columns (i2, j2, channel)
            out[:, :, s * 16:e * 16] = torch.bmm(hyper, up.view(b, -1, c8).transpose(1, 2))
        # To (y, i1, i2, x, j1, j2) in two moves of 4-element runs (one 6-D permute is 3× slower).
        out = out[:, :, : used * 16].reshape(b * k, gh, gw, 2, 2, 4).permute(0, 1, 3, 2, 4, 5).contiguous()
        m = out.view(b * k, gh, 2, gw, 2, 2, 2).permute(0, 1, 2, 5, 3, 4, 6)
        return m.reshape(b, k, 4 * gh, 4 * gw)
