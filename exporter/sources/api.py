"""What every API source sends and how it reads the API's answers: the settings (the key kept out of repr and
logs), the request headers, the retry hints of a 429, the rate-limit header, the backoff between attempts and
the one-line errors. No I/O: the client that uses them is exporter/sources/http.py."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Literal

import httpx

from exporter import __version__

USER_AGENT = f"assistants-exporter/{__version__}"

BACKOFF_BASE = 0.5  # seconds; attempt n waits uniform(0, min(cap, base * 2**(n-1)))
BACKOFF_CAP = 8.0
RETRY_AFTER_DEFAULT = 1.0  # when a 429 carries no usable hint
RETRY_AFTER_CAP = 60.0  # a hostile or buggy hint must not stall the exporter for hours

_DIGITS = re.compile(r"[0-9]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the API. `api_key` is kept out of repr and never logged."""

    base_url: str  # up to and including /v1 (or Azure's .../openai)
    api_key: str = field(repr=False)
    auth_header: Literal["bearer", "api-key"] = "bearer"
    api_version: str | None = None  # Azure: ?api-version=V on every request
    organization: str | None = None
    project: str | None = None
    max_concurrency: int = 8
    max_requests_per_second: float = 10.0
    timeout: float = 10.0  # per attempt: connect + send + whole body
    # Per page: time spent on attempts and the backoffs between them (not on waits for the client's own rate
    # limit), so a hanging API ends a poll after this long, not after max_attempts timeouts.
    deadline: float = 10.0
    page_limit: int = 100
    max_attempts: int = 3  # per request, for 5xx/timeout/connection errors and 429
    max_pages: int = 1000  # per poll; a listing that never ends must not loop forever

    def __post_init__(self) -> None:
        # Messages name the field, never its value: a misplaced key must not end up in a log.
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        for name in ("api_key", "organization", "project"):
            value = getattr(self, name)
            if value and not _HEADER_VALUE.fullmatch(value):
                raise ValueError(f"{name} must be printable ASCII (it is sent as a header)")
        if self.auth_header not in ("bearer", "api-key"):
            raise ValueError("auth_header must be 'bearer' or 'api-key'")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if not (math.isfinite(self.max_requests_per_second) and self.max_requests_per_second > 0):
            raise ValueError("max_requests_per_second must be > 0")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError("timeout must be > 0")
        if not (math.isfinite(self.deadline) and self.deadline > 0):
            raise ValueError("deadline must be > 0")
        if not 1 <= self.page_limit <= 100:
            raise ValueError("page_limit must be between 1 and 100")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_pages < 1:
            raise ValueError("max_pages must be >= 1")


def build_headers(settings: ApiSettings, beta: str = "assistants=v2") -> dict[str, str]:
    headers = {
        "OpenAI-Beta": beta,
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
    }
    if not settings.api_key:
        pass  # e.g. a local simulator: send no credentials at all
    elif settings.auth_header == "api-key":
        headers["api-key"] = settings.api_key
    else:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    if settings.organization:
        headers["OpenAI-Organization"] = settings.organization
    if settings.project:
        headers["OpenAI-Project"] = settings.project
    return headers


def parse_retry_after(headers: httpx.Headers) -> float:
    """Seconds to wait after a 429: retry-after-ms, then retry-after (numeric only), else 1 s; capped."""
    ms = _non_negative(headers.get("retry-after-ms"))
    if ms is not None:
        return min(ms / 1000.0, RETRY_AFTER_CAP)
    seconds = _non_negative(headers.get("retry-after"))
    if seconds is not None:
        return min(seconds, RETRY_AFTER_CAP)
    return RETRY_AFTER_DEFAULT  # absent, an HTTP-date, or garbage


def _non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_remaining(headers: httpx.Headers) -> int | None:
    raw = headers.get("x-ratelimit-remaining-requests")
    if raw is None:
        return None
    raw = raw.strip()
    return int(raw) if _DIGITS.fullmatch(raw) else None


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt - 1, 30))
    return rng.uniform(0.0, ceiling)


def attempts_text(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def status_error(status: int, attempts: int) -> str:
    if status in (401, 403):
        return f"authentication failed ({status})"
    if status == 429:
        return f"rate limited (429) after {attempts_text(attempts)}"
    if status >= 500:
        return f"server error ({status}) after {attempts_text(attempts)}"
    return f"unexpected status {status}"
