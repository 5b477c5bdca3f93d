"""SAM mask decoder as TinySAM uses it: always the three multimask outputs.

The single-mask token (index 0) is computed, as in the checkpoint, and dropped from the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, transformer_dim: int = 256, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, transformer: TwoWayTransformer | None = None) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, 2, 2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, 2, 2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def output_tokens(self, batch: int) -> torch.Tensor:
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        return tokens.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, return_tokens: bool = False):
        """image_embeddings (1 or B, C, 64, 64); sparse (B, K, C); dense (B or 1, C, 64, 64).

        Returns low-res mask logits (B, 3, 256, 256) and IoU predictions (B, 3); with `return_tokens`
        also the transformer's output tokens (B, 1 + 4 + K, C) (used by distillation).
        """
        b = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.output_tokens(b), sparse_prompt_embeddings], dim=1)
        src = image_embeddings.expand(b, -1, -1, -1) if image_embeddings.shape[0] == 1 else image_embeddings
        src = src + dense_prompt_embeddings
        pos = image_pe.expand(b, -1, -1, -1)
        hs, keys = self.transformer(src, pos, tokens)
        masks, iou = self.heads(hs, keys, src.shape)
        if return_tokens:
            return masks[:, 1:], iou[:, 1:], hs
        return masks[:, 1:], iou[:, 1:]

    def heads(self, hs: torch.Tensor, keys: torch.Tensor, src_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and IoU heads on the transformer outputs; all 4 mask tokens."""
        b, c, h, w = src_shape
        up = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        mask_tokens = hs[:, 1:1 + self.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = up.shape
        masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(hs[:, 0])
