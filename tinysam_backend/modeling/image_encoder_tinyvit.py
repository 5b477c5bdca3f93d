"""TinyViT image encoder (the 5M-parameter backbone TinySAM and MobileSAM distil into).

Input (B, 3, 1024, 1024) normalised image, output (B, 256, 64, 64) embedding. Parameter names follow the
official checkpoints (`patch_embed.seq.*`, `layers.{i}.blocks.{j}.*`, `neck.*`) so their state dicts load
as they are. The classification head (`norm_head`, `head`) is kept only so that those keys load; the
segmentation path never uses it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class ConvBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (`c`, `bn` in the checkpoint).

    In eval mode the BatchNorm is folded into the convolution on the fly (one convolution instead of a
    convolution plus a normalisation pass); the parameters keep the official layout.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: 1024 px → 256×256 tokens."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block of the first (convolutional) stage."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(x + y)


class PatchMerging(nn.Module):
    """Downsampling between stages; (B, C, H, W) or (B, H*W, C) in, (B, H'*W', C') out."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b = x.shape[0]
            x = x.view(b, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # tokens in (H, W) order, channels last


class WindowAttention(nn.Module):
    """Multi-head attention inside one window with a learned relative-offset bias per head.

    `observer`: None, or a callable that each forward calls with its intermediates as keywords — `q`, `k`, `v`
    (windows, heads, N, key_dim), the per-head offset `bias` (heads, N, N), the softmax `probs` and
    `out = probs @ v` — so that post-training quantization records the attention products of the real forward
    (`quantization/recorder.py`) instead of re-implementing it. It does not change the result.
    """

    observer: Callable[..., None] | None = None
    # Export form (`qkv_split_first`): the rows of `qkv` reordered head-interleaved → [q | k | v], so that q, k, v
    # come out of one transpose of the (3, heads) axes and a split of the outermost axis. Same products, same
    # values; OpenVINO then splits in place instead of running its reference VariadicSplit over the innermost axis
    # of a transposed tensor (6 % of the int8 encoder). Set only on the copy that
    # `quantization.export.export_image_encoder` traces.
    qkv_split_first: bool = False

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        if self.qkv_split_first:
            q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.key_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.key_dim).permute(0, 2, 1, 3).split(
                self.key_dim, dim=3)
        # Explicit attention, in place where possible: on the CPU, scaled_dot_product_attention with a float
        # mask takes its math path plus a scan of the mask for -inf rows (≈ 6% of the encoder's time). The ONNX
        # export traces this form too: its two MatMuls are where quantization puts per-head int8 products.
        attn = (q @ k.transpose(-2, -1)).mul_(self.scale)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        attn.add_(bias)
        probs = attn.softmax(dim=-1)
        out = probs @ v
        if self.observer is not None:
            self.observer(q=q, k=k, v=v, bias=bias, probs=probs, out=out)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def split_first_copy(encoder: nn.Module) -> nn.Module:
    """A copy of `encoder` whose window attentions compute q, k, v in the export form (`qkv_split_first`): each
    `qkv` layer's rows permuted from per-head (q_h, k_h, v_h) to (all q, all k, all v). Module names are kept, so
    quantization points and ONNX node names stay the same."""
    import copy

    if not any(isinstance(m, WindowAttention) for m in encoder.modules()):
        return encoder
    out = copy.deepcopy(encoder)
    for m in out.modules():
        if isinstance(m, WindowAttention) and not m.qkv_split_first:
            h, kd = m.num_heads, m.key_dim
            perm = torch.arange(3 * h * kd, device=m.qkv.weight.device).view(h, 3, kd).transpose(0, 1).reshape(-1)
            with torch.no_grad():
                m.qkv.weight.copy_(m.qkv.weight[perm])
                m.qkv.bias.copy_(m.qkv.bias[perm])
            m.qkv_split_first = True
    return out


class TinyViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention + depthwise 3x3 local convolution + MLP, on (B, H*W, C) tokens."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TinyViTMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = w = self.resolution
        b, n, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            y = y[:, :h, :w].reshape(b, n, c)
        x = x + y
        # Tokens (B, H·W, C) seen as a channels-last image: the depthwise convolution runs channels-last and its
        # output is already in token order (no copies in PyTorch; OpenVINO folds both transposes into the layout).
        x = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class AttentionStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViTImageEncoder(nn.Module):
    """TinyViT backbone + SAM neck. Stage resolutions for a 1024 input: 256, 128, 64, 64."""

    def __init__(self, img_size: int = 1024, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0,
                 out_chans: int = 256, num_classes: int = 1000) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        res = img_size // 4
        # The last merge keeps the resolution (stride 1), so the output grid is img_size / 16.
        resolutions = [res, res // 2, res // 4, res // 4]
        self.layers = nn.ModuleList()
        n = len(embed_dims)
        for i in range(n):
            down = None
            if i < n - 1:
                stride = 2 if i < n - 2 else 1
                down = PatchMerging(resolutions[i], embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                self.layers.append(ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, down))
            else:
                self.layers.append(AttentionStage(embed_dims[i], resolutions[i], depths[i], num_heads[i],
                                                  window_sizes[i], mlp_ratio, down))
        self.out_size = resolutions[-1]
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_size, self.out_size, c).permute(0, 3, 1, 2)
        return self.neck(x)
