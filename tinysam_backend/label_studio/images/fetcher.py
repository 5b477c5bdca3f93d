"""`ImageFetcher`: reads a located image — a local file, Label Studio (with its key), or an allowed public host —
following redirects by hand, each hop judged again, under one deadline and a byte cap."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...image_io import load_image
from ..settings import LabelStudioSettings
from . import guarded
from .auth import LabelStudioAuth
from .errors import ImageFetchError
from .locate import ImageLocation, label_studio_origin, locate_image
from .urls import ParsedURL, host_allowed, is_ip_literal, is_public_address, resolve_redirect

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class ImageFetcher:
    """Reads images for tasks. Thread-safe; one connection per request (nothing is pooled across hosts)."""

    def __init__(self, settings: LabelStudioSettings, max_pixels: int) -> None:
        self.settings = settings
        self.max_pixels = max_pixels
        self.label_studio = label_studio_origin(settings)
        self.auth = (LabelStudioAuth(self.label_studio, settings.label_studio_api_key, settings.fetch_timeout)
                     if self.label_studio is not None else None)

    def locate(self, ref: str) -> ImageLocation:
        return locate_image(ref, self.settings)

    def load(self, location: ImageLocation) -> np.ndarray:
        """Image → H × W × 3 uint8 RGB (EXIF applied). Raises ImageFetchError or ImageError."""
        return load_image(self.read_bytes(location), self.max_pixels)

    def read_bytes(self, location: ImageLocation) -> bytes:
        if location.path is not None:
            return self._read_file(location.path)
        if location.url is None:
            raise ImageFetchError(f"image location {location.identity!r} has neither a path nor a URL")
        return self._fetch(location.url)

    def _read_file(self, path: Path) -> bytes:
        size = path.stat().st_size
        if size > self.settings.max_image_bytes:
            raise ImageFetchError(f"image file {path.name} is {size} bytes, more than the limit of "
                                  f"{self.settings.max_image_bytes} (TINYSAM_LS_MAX_IMAGE_BYTES)", 413)
        with path.open("rb") as f:
            return f.read(self.settings.max_image_bytes + 1)

    def is_label_studio(self, url: ParsedURL) -> bool:
        return self.label_studio is not None and url.origin == self.label_studio.origin

    def _check_host(self, url: ParsedURL) -> bool:
        """True for Label Studio (trusted: gets the key, may be private); an allowed host → False; else 403."""
        if self.is_label_studio(url):
            return True
        if not host_allowed(url.host, self.settings.allowed_hosts):
            raise ImageFetchError(
                f"image host {url.host!r} (port {url.port}) is neither Label Studio "
                f"({self.label_studio.netloc if self.label_studio else 'LABEL_STUDIO_URL not set'}) nor in "
                "TINYSAM_LS_ALLOWED_HOSTS; the backend fetches only from hosts it is told to trust", 403)
        if is_ip_literal(url.host) and not is_public_address(url.host):
            raise ImageFetchError(f"image host {url.host} is not a public address; refused", 403)
        return False

    def _fetch(self, url: ParsedURL) -> bytes:
        timeout = self.settings.fetch_timeout
        deadline = guarded.Deadline(3 * timeout)
        for _hop in range(MAX_REDIRECTS + 1):
            trusted = self._check_host(url)
            headers = {"Accept": "*/*"}  # Label Studio answers 406 to "image/*"
            if trusted and self.auth is not None:
                headers.update(self.auth.header())
            conn, resp = guarded.request(url, "GET", headers, None, public_only=not trusted, timeout=timeout,
                                         deadline=deadline)
            try:
                if resp.status in REDIRECT_STATUSES:
                    url = resolve_redirect(url, resp.headers.get("Location", ""))
                    continue
                if resp.status == 401 and trusted and self.auth is not None and self.auth.is_pat:
                    self.auth.invalidate()
                if resp.status != 200:
                    hint = ""
                    if resp.status in (401, 403) and trusted:
                        hint = (" (check LABEL_STUDIO_API_KEY: a legacy token or a personal access token of a user "
                                "of that project)")
                    raise ImageFetchError(f"fetching the image from {url.redacted()} answered HTTP {resp.status}{hint}",
                                          404 if resp.status == 404 else 502)
                return guarded.read_capped(resp, url, self.settings.max_image_bytes, deadline)
            finally:
                deadline.disarm()
                conn.close()
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects fetching the image", 502)
