"""The Authorization header for Label Studio: `Token <legacy key>`, or `Bearer <access>` for a personal access
token (a JWT refresh token), exchanged at `/api/token/refresh/` and renewed before it expires."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import replace

from . import guarded
from .errors import ImageFetchError
from .urls import ParsedURL


def jwt_payload(token: str) -> dict | None:
    """The payload of a JWT (not verified: Label Studio verifies its own tokens), or None if `token` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


def is_personal_access_token(key: str) -> bool:
    """Label Studio personal access tokens are JWT refresh tokens; legacy tokens are 40 hex characters."""
    payload = jwt_payload(key)
    return payload is not None and payload.get("token_type") == "refresh"


def jwt_expiry(token: str) -> float | None:
    payload = jwt_payload(token)
    try:
        return float(payload["exp"]) if payload is not None else None
    except (KeyError, TypeError, ValueError):
        return None


class LabelStudioAuth:
    """The header to send to Label Studio (and only to it). Thread-safe."""

    def __init__(self, label_studio: ParsedURL, key: str | None, timeout: float) -> None:
        self.label_studio = label_studio
        self.key = key
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
        url = replace(self.label_studio, path=self.label_studio.path.rstrip("/") + "/api/token/refresh/", query=None)
        deadline = guarded.Deadline(3 * self.timeout)
        body = json.dumps({"refresh": self.key}).encode()
        conn, resp = guarded.request(url, "POST", {"Content-Type": "application/json"}, body, public_only=False,
                                     timeout=self.timeout, deadline=deadline, purpose="reach Label Studio at")
        try:
            if resp.status != 200:
                raise ImageFetchError(f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                                      f"(POST /api/token/refresh/ answered {resp.status}); create a new token", 502)
            data = guarded.read_capped(resp, url, 1024 * 1024, deadline)
        finally:
            deadline.disarm()
            conn.close()
        try:
            access = json.loads(data)["access"]
        except (ValueError, KeyError, TypeError) as e:
            raise ImageFetchError("Label Studio's /api/token/refresh/ answer has no 'access' token", 502) from e
        if not isinstance(access, str):
            raise ImageFetchError("Label Studio's /api/token/refresh/ answer has no 'access' token", 502)
        self._access = access
        self._expires = jwt_expiry(access) or time.time() + 60
