"""Teacher image embeddings computed once and kept on disk (the paper does the same).

Entries are `<dir>/<teacher fingerprint>/<image key>.npy` (float32 (C, h, w)); the fingerprint hashes the
teacher's weights, so a different teacher never reads another's embeddings. A run over N images costs N
teacher encodes, whatever the number of epochs; under DDP each rank fills its share, then all wait.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over the names, shapes and bytes of a model's state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class TeacherEmbeddingCache:
    def __init__(self, root: str | Path, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.dir = Path(root) / model_fingerprint(teacher)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.encodes = 0  # teacher encoder calls made by this process

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def fill(self, dataset, rank: int = 0, world_size: int = 1) -> int:
        """Encode the images of this rank's share (index % world_size == rank) that are not cached yet."""
        todo = [i for i in range(rank, len(dataset), world_size)]
        made = 0
        device = next(self.teacher.parameters()).device
        for i in todo:
            sample = dataset[i]
            if self.path(sample.key).exists():
                continue
            with torch.no_grad():
                emb = self.teacher.encode_image(sample.image[None].to(device))[0]
            self.encodes += 1
            tmp = self.dir / f".{sample.key}.{os.getpid()}.tmp.npy"
            np.save(tmp, emb.float().cpu().numpy())
            os.replace(tmp, self.path(sample.key))
            made += 1
        logger.info("teacher embeddings: %d computed, %d already cached (rank %d)", made, len(todo) - made, rank)
        return made

    def load(self, key: str) -> torch.Tensor:
        path = self.path(key)
        if not path.exists():
            raise FileNotFoundError(f"no cached teacher embedding {path}; call fill() first")
        return torch.from_numpy(np.load(path, allow_pickle=False))
