"""The manifest of official checkpoints and a verified, atomic downloader."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

logger = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).resolve().parents[1] / "weights" / "manifest.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    url: str
    variant: str
    size: int | None = None
    sha256: str | None = None
    description: str = ""


def read_manifest(path: Path = MANIFEST_PATH) -> dict[str, WeightsEntry]:
    data = json.loads(Path(path).read_text())
    return {name: WeightsEntry(name=name, **entry) for name, entry in data.items()}


def lookup(name: str, manifest: dict[str, WeightsEntry] | None = None) -> WeightsEntry:
    manifest = read_manifest() if manifest is None else manifest
    for entry in manifest.values():
        if name in (entry.name, entry.file):
            return entry
    raise CheckpointError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(manifest))}")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(entry: WeightsEntry, cache_dir: Path, *, sha256: str | None = None, force: bool = False,
          timeout: float = 60.0, progress: bool = True) -> Path:
    """Download `entry` into `cache_dir` unless already there; verify size and SHA-256; write atomically.

    The expected hash is `sha256` if given, else the manifest's. Returns the final path.
    """
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / entry.file
    expected = (sha256 or entry.sha256 or "").lower() or None
    if dest.exists() and not force:
        if expected and sha256_of(dest) != expected:
            raise CheckpointError(f"{dest} exists but its SHA-256 differs from {expected}; use --force to re-download")
        logger.info("%s already present", dest)
        return dest
    if not entry.url.startswith(("https://", "http://")):
        raise CheckpointError(f"refusing to download from a non-HTTP URL: {entry.url}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.file}.", suffix=".part", dir=cache_dir)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    received = 0
    try:
        req = urllib.request.Request(entry.url, headers={"User-Agent": "tinysam-backend"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total else entry.size
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.file, disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise CheckpointError(f"download of {entry.url} ended after {received} of {total} bytes")
        if entry.size is not None and received != entry.size:
            raise CheckpointError(f"{entry.file}: got {received} bytes, the manifest says {entry.size}")
        digest = h.hexdigest()
        if expected and digest != expected:
            raise CheckpointError(f"{entry.file}: SHA-256 {digest} does not match the expected {expected}")
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"download of {entry.url} failed: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    (cache_dir / f"{entry.file}.sha256").write_text(f"{digest}  {entry.file}\n")
    logger.info("downloaded %s (%d bytes, sha256 %s)", dest, received, digest)
    return dest
