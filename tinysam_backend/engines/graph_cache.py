"""Engine graphs built from a state dict once, cached beside the download cache (`Settings.cache_dir/engines`).

A graph (the image encoder's ONNX export, or the OpenVINO IR converted from it) is keyed by the SHA-256 of the
checkpoint's bytes, the variant, the graph kind and the versions that shape it (tinysam-backend, torch, and
openvino for the IR, `GRAPH_FORMAT`). It is written into a private temporary directory in the cache and then
renamed into place (one `rename`, atomic on one file system), so processes that start together (gunicorn workers)
never read a half-written graph: the first rename wins, the others discard their copy and use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

GRAPH_FORMAT = 3  # 3: export form of window attention (`qkv_split_first`), channels-last local conv and downsample
MANIFEST = "graph.json"
_CHUNK = 1 << 22


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def graph_key(checkpoint_sha256: str, variant: str, kind: str, versions: dict[str, str]) -> str:
    """A short, stable name for one graph: hash of the checkpoint's hash, variant, kind and versions."""
    facts = json.dumps({"checkpoint": checkpoint_sha256, "variant": variant, "kind": kind, "format": GRAPH_FORMAT,
                        **versions}, sort_keys=True)
    return f"{variant}-{kind}-{hashlib.sha256(facts.encode()).hexdigest()[:20]}"


def cached_graph(cache_root: str | Path, key: str, build: Callable[[Path], None], facts: dict) -> Path:
    """Directory holding graph `key` under `cache_root`, built by `build(tmp_dir)` when absent (module docstring).

    `build` writes the graph's files into the directory it gets; `facts` are recorded in its `graph.json`.
    """
    root = Path(cache_root)
    final = root / key
    if (final / MANIFEST).is_file():
        logger.info("engine graph %s from the cache", final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        build(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"key": key, **facts}, indent=2))
        try:
            os.rename(tmp, final)
            logger.info("built engine graph %s", final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            logger.info("engine graph %s was built by another process meanwhile; using it", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
