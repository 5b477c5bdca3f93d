"""Image URLs, parsed once by the parser of the library that connects (urllib3), and the address rules.

A URL is read by two parsers in this process: urllib3's (which connects) and `urllib.parse` (which Python code and
earlier versions of this backend used for decisions). Where they disagree — `http://a:1\\@b:2/` is host `b` to
`urlsplit` and host `a` to urllib3 — a trust decision taken on one parse sends the request, and the API key, to
the host of the other. So a URL is parsed exactly once into a `ParsedURL`; the trust decision, the connection
(`guarded.request` connects to its host and port) and every error message use that value. URLs that are
ambiguous are refused before parsing: backslashes, user info, whitespace and control characters, non-ASCII
hosts, and any URL whose two parses differ in scheme, host or port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .errors import ImageFetchError

MAX_URL_CHARS = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class ParsedURL:
    """An absolute http(s) URL as urllib3 reads it. host: lower case, IPv6 without brackets; port: explicit or the
    scheme's default; path and query percent-encoded as they go on the request line (no fragment)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def request_target(self) -> str:
        return (self.path or "/") + (f"?{self.query}" if self.query is not None else "")

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.request_target}"

    def redacted(self) -> str:
        """For messages and logs: no query (it may hold a signature), path cut at 80 characters."""
        return f"{self.scheme}://{self.netloc}{(self.path or '/')[:80]}"


def check_characters(text: str, what: str = "image URL") -> None:
    """Refuse what parsers read differently: backslashes, whitespace and control characters."""
    found = _FORBIDDEN.search(text)
    if found is None:
        return
    char = found.group()
    kind = "a backslash" if char == "\\" else ("whitespace" if char == " " else f"a control character {char!r}")
    raise ImageFetchError(f"{what} {text[:100]!r} contains {kind}; refused (URL parsers disagree on such URLs, "
                          "percent-encode it)")


def parse_image_url(text: str, what: str = "image URL") -> ParsedURL:
    """An absolute http(s) URL → `ParsedURL`, or ImageFetchError (422) saying why it is refused."""
    if not isinstance(text, str):
        raise ImageFetchError(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_URL_CHARS:
        raise ImageFetchError(f"{what} is {len(text)} characters long; refusing more than {MAX_URL_CHARS}")
    check_characters(text, what)
    try:
        url = parse_url(text)
    except LocationParseError as e:
        raise ImageFetchError(f"{what} {text[:100]!r} cannot be parsed (invalid host or port): {e}") from None
    scheme = (url.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        shown = scheme or ("//" if text.startswith("//") else "none")
        raise ImageFetchError(f"{what} scheme {shown!r} is not supported (expected http or https); got {text[:100]!r}")
    if url.auth is not None or "@" in (url.netloc or ""):
        raise ImageFetchError(f"{what} {text[:100]!r} has user info (user@host); refused, credentials in URLs are "
                              "not sent and such URLs are a known way to confuse hosts")
    if not url.host:
        raise ImageFetchError(f"{what} {text[:100]!r} has no host")
    if not url.host.isascii() or not (url.netloc or "").isascii():
        raise ImageFetchError(f"{what} host {url.host[:100]!r} is not ASCII; write it in its punycode form")
    host = url.host.lower()
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    parsed = ParsedURL(scheme=scheme, host=host, port=url.port or DEFAULT_PORTS[scheme], path=url.path or "/",
                       query=url.query)
    _cross_check(text, parsed, what)
    return parsed


def _cross_check(text: str, parsed: ParsedURL, what: str) -> None:
    """The Python standard parser must read the same scheme, host and port, else the URL is ambiguous."""
    try:
        other = urlsplit(text)
        other_port = other.port
    except ValueError as e:
        raise ImageFetchError(f"{what} {text[:100]!r} is read differently by URL parsers ({e}); refused") from None
    scheme = other.scheme.lower()
    seen = (scheme, (other.hostname or ""), other_port or DEFAULT_PORTS.get(scheme))
    if seen != parsed.origin or other.username is not None:
        raise ImageFetchError(f"{what} {text[:100]!r} is read as {parsed.scheme}://{parsed.netloc} by the HTTP "
                              f"client but as {seen[0]}://{seen[1]}:{seen[2]} by Python's URL parser; refused")


def resolve_redirect(base: ParsedURL, location: str) -> ParsedURL:
    """A redirect's `Location` (absolute or relative to `base`) → `ParsedURL`, by the same rules as a task URL."""
    if not isinstance(location, str) or not location:
        raise ImageFetchError(f"{base.redacted()} redirected without a Location", 502)
    check_characters(location, "redirect Location")
    return parse_image_url(urljoin(str(base), location), "redirect Location")


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


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
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
