"""The one error of image fetching, carrying the HTTP status the backend answers with."""

from __future__ import annotations

from ...errors import TinySAMError


class ImageFetchError(TinySAMError):
    """The image could not be fetched; `status` is the HTTP status the backend answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
