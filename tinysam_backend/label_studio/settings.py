"""Settings of the Label Studio ML backend: the one place this part reads the environment (`from_env()`).

Variable names follow Label Studio's own ML backends (`LABEL_STUDIO_URL`, `LABEL_STUDIO_API_KEY`,
`BASIC_AUTH_USER`, `BASIC_AUTH_PASS`); the rest are prefixed `TINYSAM_LS_`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinySAMError
from ..everything import EverythingParams
from .protocol import DEFAULT_MAX_POINTS

PREANNOTATE_MODES = ("background", "sync", "off")
# `TINYSAM_LS_BATCH_<NAME>` sets segment-everything's parameter <name> (e.g. TINYSAM_LS_BATCH_POINTS_PER_SIDE).
EVERYTHING_ENV_PREFIX = "TINYSAM_LS_BATCH_"


class SettingsError(TinySAMError, ValueError):
    """An environment variable of the Label Studio backend has a value that cannot be used."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from e
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from e
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _everything(env: Mapping[str, str]) -> tuple[tuple[str, int | float | str], ...]:
    """The segment-everything parameters set as `TINYSAM_LS_BATCH_<NAME>`, parsed by the field's kind (the ranges are
    checked by `EverythingParams` when the settings are built)."""
    found = []
    for p in EverythingParams.parameters():
        name = EVERYTHING_ENV_PREFIX + p.name.upper()
        raw = env.get(name, "")
        if raw.strip():
            try:
                found.append((p.name, p.parse(raw)))
            except ValueError as e:
                raise SettingsError(f"{name}: {e}") from None
    return tuple(found)


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in env.get(name, "").split(",") if h.strip())


@dataclass(frozen=True)
class LabelStudioSettings:
    """How the backend reaches Label Studio, protects itself, and what it answers.

    label_studio_url: `LABEL_STUDIO_URL`, base URL of Label Studio (images `/data/...` are fetched from it; its host
        is trusted even on loopback or a private network).
    label_studio_api_key: `LABEL_STUDIO_API_KEY`, a legacy token or a personal access token (JWT refresh token,
        exchanged at `/api/token/refresh/`).
    media_dir: `LABEL_STUDIO_MEDIA_DIR` (or `LABEL_STUDIO_BASE_DATA_DIR`/media): read `/data/upload/...` straight
        from disk when Label Studio runs on the same machine.
    local_files_root: `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`: read `/data/local-files/?d=...` from disk.
    allowed_hosts: `TINYSAM_LS_ALLOWED_HOSTS`, comma-separated extra hosts task URLs may point at (public addresses
        only; `*.example.com` allows subdomains).
    basic_auth_user / basic_auth_pass: `BASIC_AUTH_USER` / `BASIC_AUTH_PASS`, required of every request but `/health`
        when both are set.
    cache_bytes: `TINYSAM_LS_CACHE_BYTES`, bound of the image-embedding cache per worker (an image takes 45 MiB with
        the fp32 model: embedding 4 MiB + the low-rank decoder's image side 41 MiB; the cache counts the bytes held).
    refine_entries: `TINYSAM_LS_REFINE_ENTRIES`, low-res logits kept for click refinement (256 KiB each).
    max_body_bytes: `TINYSAM_LS_MAX_BODY_BYTES`, request bodies above are refused with 413.
    max_image_bytes: `TINYSAM_LS_MAX_IMAGE_BYTES`, downloads above are refused.
    max_points: `TINYSAM_LS_MAX_POINTS`, most keypoints in one interactive prompt (more: 422); the decoder's cost
        grows with the points.
    fetch_timeout: `TINYSAM_LS_FETCH_TIMEOUT`, seconds for connecting to and for each read from an image host.
    batch_enabled: `TINYSAM_LS_BATCH_ENABLED`, answer `/predict` without context with hierarchical everything.
    batch_max_regions: `TINYSAM_LS_BATCH_MAX_REGIONS`, most brush regions per task (highest predicted IoU first).
    batch_min_area: `TINYSAM_LS_BATCH_MIN_AREA`, smallest mask area kept, as a fraction of the image area.
    batch_tasks_per_request: `TINYSAM_LS_BATCH_TASKS_PER_REQUEST`, above this many tasks in one `/predict` the
        backend answers the first task only, so that Label Studio asks again one task per request (each with its
        own 100 s timeout) instead of timing out on the whole batch.
    batch_everything: `TINYSAM_LS_BATCH_<NAME>` for every field of `everything.EverythingParams`
        (`TINYSAM_LS_BATCH_POINTS_PER_SIDE`, `…_PRED_IOU_THRESH`, `…_MODE` …), the parameters of pre-annotation's
        `segment_everything` under the same names, as (name, value) pairs of those set (unset: its defaults).
    model_version: `TINYSAM_LS_MODEL_VERSION`, the version string reported to Label Studio (default from the
        checkpoint's file name).
    preannotate: `TINYSAM_LS_PREANNOTATE`, how a `/predict` without context (opening a task, "Retrieve
        predictions") is answered: `background` answers at once with no prediction and queues segment-everything,
        whose result is written to Label Studio through its API (`POST /api/predictions/`, needs LABEL_STUDIO_URL and
        LABEL_STUDIO_API_KEY); `sync` computes it inside the request; `off` never pre-annotates. Unset: `background`
        when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are both set, else `sync`.
    preannotate_queue: `TINYSAM_LS_PREANNOTATE_QUEUE`, most tasks waiting for background pre-annotation per worker
        (a task asked for again while it waits is not queued twice; above the bound, tasks are not queued and Label
        Studio asks again the next time the task is opened).
    """

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    media_dir: Path | None = None
    local_files_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    cache_bytes: int = 512 * 1024 * 1024
    refine_entries: int = 256
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 64 * 1024 * 1024
    max_points: int = DEFAULT_MAX_POINTS
    fetch_timeout: float = 10.0
    batch_enabled: bool = True
    batch_max_regions: int = 50
    batch_min_area: float = 0.0005
    batch_tasks_per_request: int = 1
    batch_everything: tuple[tuple[str, int | float | str], ...] = ()
    model_version: str | None = None
    preannotate: str = "sync"
    preannotate_queue: int = 10000

    def __post_init__(self) -> None:
        if self.label_studio_url is not None and not self.label_studio_url.startswith(("http://", "https://")):
            raise SettingsError(f"LABEL_STUDIO_URL must start with http:// or https://, got {self.label_studio_url!r}")
        if self.label_studio_url is not None:  # by the rules every fetched URL follows (user info, backslashes…)
            from .images.errors import ImageFetchError
            from .images.urls import parse_image_url

            try:
                parse_image_url(self.label_studio_url, "LABEL_STUDIO_URL")
            except ImageFetchError as e:
                raise SettingsError(str(e)) from None
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if not 0.0 <= self.batch_min_area < 1.0:
            raise SettingsError(f"TINYSAM_LS_BATCH_MIN_AREA must be a fraction in [0, 1), got {self.batch_min_area}")
        try:  # a bad TINYSAM_LS_BATCH_<NAME> fails at start-up, by EverythingParams' own checks
            EverythingParams.from_overrides(**self.everything_params())
        except ValueError as e:
            names = ", ".join(EVERYTHING_ENV_PREFIX + name.upper() for name, _ in self.batch_everything)
            raise SettingsError(f"{EVERYTHING_ENV_PREFIX}* settings ({names}): {e}") from None
        if self.preannotate not in PREANNOTATE_MODES:
            raise SettingsError(f"TINYSAM_LS_PREANNOTATE must be one of {', '.join(PREANNOTATE_MODES)}, "
                                f"got {self.preannotate!r}")
        if self.preannotate == "background" and not (self.label_studio_url and self.label_studio_api_key):
            raise SettingsError("TINYSAM_LS_PREANNOTATE=background writes predictions through Label Studio's API: it "
                                "needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, got "
                                f"LABEL_STUDIO_URL={'set' if self.label_studio_url else 'unset'}, "
                                f"LABEL_STUDIO_API_KEY={'set' if self.label_studio_api_key else 'unset'}")

    @property
    def preannotate_mode(self) -> str:
        """`background`, `sync` or `off`; `TINYSAM_LS_BATCH_ENABLED=false` means `off` whatever the mode says."""
        return self.preannotate if self.batch_enabled else "off"

    def everything_params(self) -> dict:
        """Keyword arguments for `segment_everything` that were set (the others keep its defaults)."""
        return dict(self.batch_everything)

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user is None or self.basic_auth_pass is None:
            return None
        return self.basic_auth_user, self.basic_auth_pass

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LabelStudioSettings:
        env = os.environ if environ is None else environ
        media = env.get("LABEL_STUDIO_MEDIA_DIR") or None
        if media is None and env.get("LABEL_STUDIO_BASE_DATA_DIR"):
            media = str(Path(env["LABEL_STUDIO_BASE_DATA_DIR"]) / "media")
        local_root = env.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None
        url = (env.get("LABEL_STUDIO_URL") or "").strip().rstrip("/") or None
        key = (env.get("LABEL_STUDIO_API_KEY") or "").strip() or None
        preannotate = env.get("TINYSAM_LS_PREANNOTATE", "").strip().lower() or ("background" if url and key else "sync")
        return cls(
            label_studio_url=url,
            label_studio_api_key=key,
            media_dir=Path(media) if media else None,
            local_files_root=Path(local_root) if local_root else None,
            allowed_hosts=_hosts(env, "TINYSAM_LS_ALLOWED_HOSTS"),
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            cache_bytes=_int(env, "TINYSAM_LS_CACHE_BYTES", cls.cache_bytes),
            refine_entries=_int(env, "TINYSAM_LS_REFINE_ENTRIES", cls.refine_entries),
            max_body_bytes=_int(env, "TINYSAM_LS_MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            max_image_bytes=_int(env, "TINYSAM_LS_MAX_IMAGE_BYTES", cls.max_image_bytes, minimum=1024),
            max_points=_int(env, "TINYSAM_LS_MAX_POINTS", cls.max_points, minimum=1),
            fetch_timeout=_float(env, "TINYSAM_LS_FETCH_TIMEOUT", cls.fetch_timeout, minimum=0.1),
            batch_enabled=_bool(env, "TINYSAM_LS_BATCH_ENABLED", cls.batch_enabled),
            batch_max_regions=_int(env, "TINYSAM_LS_BATCH_MAX_REGIONS", cls.batch_max_regions, minimum=1),
            batch_min_area=_float(env, "TINYSAM_LS_BATCH_MIN_AREA", cls.batch_min_area),
            batch_tasks_per_request=_int(env, "TINYSAM_LS_BATCH_TASKS_PER_REQUEST", cls.batch_tasks_per_request,
                                         minimum=1),
            batch_everything=_everything(env),
            model_version=(env.get("TINYSAM_LS_MODEL_VERSION") or "").strip() or None,
            preannotate=preannotate,
            preannotate_queue=_int(env, "TINYSAM_LS_PREANNOTATE_QUEUE", cls.preannotate_queue, minimum=1),
        )
