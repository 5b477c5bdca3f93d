"""Getting a task's image: Label Studio URLs, local media shortcuts, and guarded fetches from other hosts.

Trust (OWASP SSRF rules): the configured Label Studio origin (`LABEL_STUDIO_URL`) is trusted wherever it lives —
it is usually on the same machine or a private network — and only it receives the API key. Any other host must
be allowed explicitly (`TINYSAM_LS_ALLOWED_HOSTS`), and even then the connection is refused unless the address
actually connected to is public (checked on the socket, so DNS rebinding cannot slip a private address in).
Only http(s); redirects are followed by hand (at most 3), each hop judged by the same rules; connect and read
timeouts, an overall deadline, and a byte cap on the body. Images are then decoded by the core, which opens only
the expected raster formats with Pillow's decompression-bomb check.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import numpy as np
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from ..errors import TinySAMError
from ..image_io import load_image
from .settings import LabelStudioSettings

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
UPLOAD_PREFIX = "/data/upload/"
LOCAL_FILES_PREFIX = "/data/local-files/"


class ImageFetchError(TinySAMError):
    """The image could not be fetched; `status` is the HTTP status the backend answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class ImageLocation:
    """Where an image is: a local file (`path`) or an absolute http(s) `url`. `identity` keys the caches."""

    identity: str
    url: str | None = None
    path: Path | None = None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, with the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError as e:
        raise ImageFetchError(f"image URL {url!r} has an invalid port") from e
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Is `host` in the allow-list? Entries are exact host names/addresses or `*.domain` for subdomains."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry.rstrip("."):
            return True
    return False


def is_public_address(address: str) -> bool:
    """True for globally routable unicast addresses; loopback, private, link-local, multicast… are not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _inside(path: Path, root: Path) -> Path | None:
    try:
        resolved = path.resolve(strict=True)
        root_resolved = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_relative_to(root_resolved) and resolved.is_file() else None


def locate_image(ref: str, settings: LabelStudioSettings) -> ImageLocation:
    """A task's image reference → where to read it. No network; only local files are looked at.

    `/data/upload/...` → `<media_dir>/upload/...` when that file exists, else Label Studio's URL;
    `/data/local-files/?d=...` → `<local_files_root>/...` when configured, else Label Studio's URL;
    other paths starting with `/` → Label Studio's URL; absolute http(s) URLs are kept (checked when fetched).
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ImageFetchError(f"image reference must be a URL or path string, got {ref!r}")
    ref = ref.strip()
    if len(ref) > 8192:
        raise ImageFetchError(f"image URL is {len(ref)} characters long; refusing more than 8192")
    parts = urlsplit(ref)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ImageFetchError(f"image URL {ref!r} has no host")
        if settings.label_studio_url and origin(ref) == origin(settings.label_studio_url):
            local = _local_shortcut(parts.path, parts.query, settings)
            if local is not None:
                return local
        return ImageLocation(identity=ref, url=ref)
    if parts.scheme or parts.netloc:
        raise ImageFetchError(
            f"image URL scheme {parts.scheme or '//'!r} is not supported (expected http(s) or a Label Studio path "
            f"like /data/upload/...); got {ref[:100]!r}")
    if not ref.startswith("/"):
        raise ImageFetchError(f"relative image path {ref[:100]!r} is not a Label Studio path (expected /data/...)")
    local = _local_shortcut(parts.path, parts.query, settings)
    if local is not None:
        return local
    if not settings.label_studio_url:
        raise ImageFetchError(
            f"image {ref[:100]!r} is a Label Studio path; set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so the "
            "backend can fetch it, or LABEL_STUDIO_MEDIA_DIR when Label Studio runs on this machine")
    url = settings.label_studio_url.rstrip("/") + ref
    return ImageLocation(identity=url, url=url)


def _local_shortcut(path: str, query: str, settings: LabelStudioSettings) -> ImageLocation | None:
    candidate: Path | None = None
    root: Path | None = None
    if path.startswith(UPLOAD_PREFIX) and settings.media_dir is not None:
        root = settings.media_dir / "upload"
        candidate = root / unquote(path[len(UPLOAD_PREFIX):])
    elif path.startswith(LOCAL_FILES_PREFIX) and settings.local_files_root is not None:
        d = parse_qs(query).get("d", [""])[0]
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


def is_personal_access_token(key: str) -> bool:
    """Label Studio personal access tokens are JWT refresh tokens; legacy tokens are 40 hex characters."""
    parts = key.split(".")
    if len(parts) != 3:
        return False
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return False
    return isinstance(payload, dict) and payload.get("token_type") == "refresh"


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=" * (-len(token.split(".")[1]) % 4)))
        return float(payload["exp"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


# --------------------------------------------------------------------------------------- guarded connections
class _PublicOnlyMixin:
    def _new_conn(self):  # type: ignore[override]
        sock = super()._new_conn()
        try:
            peer = sock.getpeername()[0]
        except OSError:
            peer = ""
        if not is_public_address(peer):
            sock.close()
            raise _RefusedAddress(f"{self.host} resolved to {peer or 'an unknown address'}, which is not a public "
                                  "address; only the configured Label Studio host may be on a private network")
        return sock


class _RefusedAddress(OSError):
    pass


class _PublicHTTPConnection(_PublicOnlyMixin, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicOnlyMixin, HTTPSConnection):
    pass


class _PublicHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


def _public_only_pool_manager(num_pools: int = 10) -> urllib3.PoolManager:
    pm = urllib3.PoolManager(num_pools=num_pools)
    pm.pool_classes_by_scheme = {"http": _PublicHTTPConnectionPool, "https": _PublicHTTPSConnectionPool}
    return pm


# --------------------------------------------------------------------------------------------------- fetcher
class LabelStudioAuth:
    """The Authorization header for Label Studio: `Token <legacy key>`, or `Bearer <access>` for a personal access
    token, exchanged at `/api/token/refresh/` and renewed before it expires (thread-safe)."""

    def __init__(self, base_url: str, key: str | None, pool: urllib3.PoolManager, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.pool = pool
        self.timeout = timeout
        self.is_pat = bool(key) and is_personal_access_token(key)
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        if not self.key:
            return {}
        if not self.is_pat:
            return {"Authorization": f"Token {self.key}"}
        with self._lock:
            if self._access is None or time.time() > self._expires - 30:
                self._exchange()
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self) -> None:
        with self._lock:
            self._access = None

    def _exchange(self) -> None:
        url = self.base_url + "/api/token/refresh/"
        try:
            resp = self.pool.request("POST", url, body=json.dumps({"refresh": self.key}).encode(),
                                     headers={"Content-Type": "application/json"}, redirect=False, retries=False,
                                     timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))
        except Urllib3HTTPError as e:
            raise ImageFetchError(f"could not reach Label Studio at {url} to exchange the personal access token: {e}",
                                  502) from e
        if resp.status != 200:
            raise ImageFetchError(f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                                  f"(POST /api/token/refresh/ answered {resp.status}); create a new token", 502)
        try:
            access = json.loads(resp.data)["access"]
        except (ValueError, KeyError, TypeError) as e:
            raise ImageFetchError("Label Studio's /api/token/refresh/ answer has no 'access' token", 502) from e
        self._access = access
        self._expires = _jwt_expiry(access) or time.time() + 60


class ImageFetcher:
    """Reads images for tasks: local files, Label Studio (with its key), allowed public hosts. Thread-safe."""

    def __init__(self, settings: LabelStudioSettings, max_pixels: int) -> None:
        self.settings = settings
        self.max_pixels = max_pixels
        self._trusted_pool = urllib3.PoolManager(num_pools=4, maxsize=8)
        self._public_pool = _public_only_pool_manager()
        self.auth = (LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, self._trusted_pool,
                                     settings.fetch_timeout) if settings.label_studio_url else None)

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

    def _is_label_studio(self, url: str) -> bool:
        return bool(self.settings.label_studio_url) and origin(url) == origin(self.settings.label_studio_url)

    def _fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + 3 * self.settings.fetch_timeout
        for _hop in range(MAX_REDIRECTS + 1):
            scheme, host, _port = origin(url)
            if scheme not in ("http", "https"):
                raise ImageFetchError(f"refusing image URL with scheme {scheme!r}; expected http or https", 403)
            trusted = self._is_label_studio(url)
            if not trusted:
                if not host_allowed(host, self.settings.allowed_hosts):
                    raise ImageFetchError(
                        f"image host {host!r} is neither Label Studio ({self.settings.label_studio_url or 'not set'}) "
                        "nor in TINYSAM_LS_ALLOWED_HOSTS; the backend fetches only from hosts it is told to trust",
                        403)
                literal = host.strip("[]")
                if _is_ip_literal(literal) and not is_public_address(literal):
                    raise ImageFetchError(f"image host {host} is not a public address; refused", 403)
            resp = self._request(url, trusted, deadline)
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise ImageFetchError(f"{url} redirected without a Location", 502)
                    url = urljoin(url, location)
                    continue
                if resp.status == 401 and trusted and self.auth is not None and self.auth.is_pat:
                    self.auth.invalidate()
                if resp.status != 200:
                    hint = ""
                    if resp.status in (401, 403) and trusted:
                        hint = " (check LABEL_STUDIO_API_KEY: a legacy token or a personal access token of a user " \
                               "of that project)"
                    raise ImageFetchError(f"fetching the image from {_redact(url)} answered HTTP {resp.status}{hint}",
                                          404 if resp.status == 404 else 502)
                return self._read_capped(resp, url, deadline)
            finally:
                resp.release_conn()
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects fetching the image", 502)

    def _request(self, url: str, trusted: bool, deadline: float):
        headers = {"Accept": "*/*"}  # Label Studio answers 406 to "image/*"
        if trusted and self.auth is not None:
            headers.update(self.auth.header())
        pool = self._trusted_pool if trusted else self._public_pool
        timeout = max(0.1, min(self.settings.fetch_timeout, deadline - time.monotonic()))
        try:
            return pool.request("GET", url, headers=headers, redirect=False, retries=False, preload_content=False,
                                timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except Urllib3HTTPError as e:
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, _RefusedAddress) or "not a public address" in str(reason):
                raise ImageFetchError(str(reason).split(": ", 1)[-1] if isinstance(reason, Exception) else str(e),
                                      403) from e
            if "timed out" in str(e).lower():
                raise ImageFetchError(f"fetching the image from {_redact(url)} timed out", 504) from e
            raise ImageFetchError(f"could not fetch the image from {_redact(url)}: {type(e).__name__}", 502) from e

    def _read_capped(self, resp, url: str, deadline: float) -> bytes:
        cap = self.settings.max_image_bytes
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ImageFetchError(f"image at {_redact(url)} is {declared} bytes, more than the limit of {cap} "
                                  "(TINYSAM_LS_MAX_IMAGE_BYTES)", 413)
        chunks = []
        total = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise ImageFetchError(f"fetching the image from {_redact(url)} took too long", 504)
                chunk = resp.read(64 * 1024)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise ImageFetchError(f"image at {_redact(url)} is larger than the limit of {cap} bytes "
                                          "(TINYSAM_LS_MAX_IMAGE_BYTES)", 413)
                chunks.append(chunk)
        except Urllib3HTTPError as e:
            raise ImageFetchError(f"reading the image from {_redact(url)} failed: {type(e).__name__}", 502) from e
        return b"".join(chunks)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _redact(url: str) -> str:
    parts = urlsplit(url)  # no query (it may hold a signature) and no user info
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path[:80]}"


__all__ = ["ImageFetchError", "ImageFetcher", "ImageLocation", "LabelStudioAuth", "host_allowed",
           "is_personal_access_token", "is_public_address", "locate_image", "origin"]
