"""A task's image reference → where to read it: a local file (Label Studio's media on this machine) or a URL.

No network here; only local files are looked at. Every URL is parsed once (`urls.parse_image_url`) and travels
as that `ParsedURL` to the fetcher.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

from ..settings import LabelStudioSettings
from .errors import ImageFetchError
from .urls import MAX_URL_CHARS, ParsedURL, check_characters, parse_image_url

UPLOAD_PREFIX = "/data/upload/"
LOCAL_FILES_PREFIX = "/data/local-files/"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class ImageLocation:
    """Where an image is: a local file (`path`) or an http(s) `url`. `identity` keys the caches."""

    identity: str
    url: ParsedURL | None = None
    path: Path | None = None


def label_studio_origin(settings: LabelStudioSettings) -> ParsedURL | None:
    """`LABEL_STUDIO_URL` parsed by the same rules as task URLs (None when not set)."""
    if not settings.label_studio_url:
        return None
    return parse_image_url(settings.label_studio_url, "LABEL_STUDIO_URL")


def locate_image(ref: str, settings: LabelStudioSettings) -> ImageLocation:
    """A task's image reference → where to read it.

    `/data/upload/...` → `<media_dir>/upload/...` when that file exists, else Label Studio's URL;
    `/data/local-files/?d=...` → `<local_files_root>/...` when configured, else Label Studio's URL;
    other paths starting with `/` → Label Studio's URL; absolute http(s) URLs are kept (checked when fetched).
    Raises ImageFetchError (422) for anything else, naming what was expected.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ImageFetchError(f"image reference must be a URL or path string, got {ref!r}")
    ref = ref.strip()
    if len(ref) > MAX_URL_CHARS:
        raise ImageFetchError(f"image URL is {len(ref)} characters long; refusing more than {MAX_URL_CHARS}")
    check_characters(ref)
    if _SCHEME.match(ref):
        url = parse_image_url(ref)
        ls = label_studio_origin(settings)
        if ls is not None and url.origin == ls.origin:
            local = _local_shortcut(url.path, url.query, settings)
            if local is not None:
                return local
        return ImageLocation(identity=str(url), url=url)
    if ref.startswith("//"):
        raise ImageFetchError(f"image URL scheme '//' is not supported (expected http(s) or a Label Studio path "
                              f"like /data/upload/...); got {ref[:100]!r}")
    if not ref.startswith("/"):
        raise ImageFetchError(f"relative image path {ref[:100]!r} is not a Label Studio path (expected /data/...)")
    path, _, query = ref.split("#", 1)[0].partition("?")
    local = _local_shortcut(path, query, settings)
    if local is not None:
        return local
    if not settings.label_studio_url:
        raise ImageFetchError(
            f"image {ref[:100]!r} is a Label Studio path; set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so the "
            "backend can fetch it, or LABEL_STUDIO_MEDIA_DIR when Label Studio runs on this machine")
    url = parse_image_url(settings.label_studio_url.rstrip("/") + ref)
    return ImageLocation(identity=str(url), url=url)


def _inside(path: Path, root: Path) -> Path | None:
    try:
        resolved = path.resolve(strict=True)
        root_resolved = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_relative_to(root_resolved) and resolved.is_file() else None


def _local_shortcut(path: str, query: str | None, settings: LabelStudioSettings) -> ImageLocation | None:
    candidate: Path | None = None
    root: Path | None = None
    if path.startswith(UPLOAD_PREFIX) and settings.media_dir is not None:
        root = settings.media_dir / "upload"
        candidate = root / unquote(path[len(UPLOAD_PREFIX):])
    elif path.startswith(LOCAL_FILES_PREFIX) and settings.local_files_root is not None:
        d = parse_qs(query or "").get("d", [""])[0]
        if d:
            root = settings.local_files_root
            candidate = root / d.lstrip("/")
    if candidate is None or root is None:
        return None
    found = _inside(candidate, root)
    if found is None:
        return None
    stat = found.stat()
    return ImageLocation(identity=f"file://{found}?mtime_ns={stat.st_mtime_ns}&size={stat.st_size}", path=found)
