"""Getting a task's image: Label Studio URLs, local media shortcuts, and guarded fetches from other hosts.

Trust (OWASP SSRF rules): the configured Label Studio origin (`LABEL_STUDIO_URL`) is trusted wherever it lives —
it is usually on the same machine or a private network — and only it receives the API key. Any other host must
be allowed explicitly (`TINYSAM_LS_ALLOWED_HOSTS`), and even then the connection is refused unless the address
actually connected to is public (checked on the socket, so DNS rebinding cannot slip a private address in).
Only http(s); redirects are followed by hand (at most 3), each hop judged by the same rules; connect and read
timeouts, an overall deadline enforced on the socket, and a byte cap on the body. Images are then decoded by the
core, which opens only the expected raster formats, within the configured pixel limit.

Modules: `urls` (parse once, refuse ambiguous URLs; address rules), `locate` (reference → file or URL), `auth`
(Label Studio tokens), `guarded` (connections to exactly the parsed host, public-only check, deadline),
`fetcher` (the fetch loop).
"""

from .auth import LabelStudioAuth, is_personal_access_token, jwt_payload
from .errors import ImageFetchError
from .fetcher import ImageFetcher
from .locate import ImageLocation, locate_image
from .urls import ParsedURL, host_allowed, is_public_address, parse_image_url, resolve_redirect

__all__ = ["ImageFetchError", "ImageFetcher", "ImageLocation", "LabelStudioAuth", "ParsedURL", "host_allowed",
           "is_personal_access_token", "is_public_address", "jwt_payload", "locate_image", "parse_image_url",
           "resolve_redirect"]
