"""`http_server_config` (response headers, HTTP/2) and `rate_limit`: their checks and their ASGI middlewares.

- headers: exporter-toolkit lets five names be set, two of them with fixed values (its validateHeaderConfig);
  any other name or value is refused, as promtool refuses it. Sent on every response the application answers.
- http2: the server here is uvicorn with the httptools (or h11) protocol, HTTP/1.1 only; TLS offers ALPN
  `http/1.1`. `http2: false` is what it does; `http2: true` is refused.
- rate_limit: one token bucket (Go's rate.NewLimiter(rate.Every(interval), burst)) for every path but the write
  endpoints, taken before basic auth, so a flood of wrong passwords is answered 429 without a bcrypt check.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.web_fields import WebConfigError, boolean, section

HTTP_KEYS = frozenset({"http2", "headers"})
RATE_LIMIT_KEYS = frozenset({"interval", "burst"})
# exporter-toolkit's extraHTTPHeaders: the names that may be set, and the values allowed where it fixes them.
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
HTTP2 = False  # what the server does: uvicorn's protocols (httptools, h11) are HTTP/1.1 only
# Paths that authenticate themselves (bearer tokens): basic auth and rate_limit do not apply to them.
OWN_AUTH_PREFIXES = ("/api/", "/webhooks/")
# Go's time.ParseDuration units; microseconds also as "\u00b5s" and "\u03bcs" (micro sign, Greek mu), as Go takes them.
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_http(doc: object) -> tuple[tuple[tuple[str, str], ...], bool]:
    """http_server_config -> (headers to send, http2)."""
    name = "http_server_config"
    http = section(doc, name, HTTP_KEYS) or {}
    http2 = boolean(http, name, "http2", HTTP2)
    if http2 and not HTTP2:
        raise WebConfigError(f"{name}.http2: true cannot be honoured: the exporter's HTTP server (uvicorn, httptools "
                             "protocol) speaks HTTP/1.1 only; set http2: false or leave it out")
    headers = section(http.get("headers"), f"{name}.headers", frozenset(HEADERS)) or {}
    chosen: list[tuple[str, str]] = []
    for header, raw in headers.items():
        value = _header_value(header, raw)
        allowed = HEADERS[header]
        if allowed and value not in allowed:
            raise WebConfigError(f"{name}.headers.{header} must be one of {', '.join(allowed)} (exporter-toolkit's "
                                 f"values, lower case), not {value!r}")
        if value:  # blank: not sent
            chosen.append((header, value))
    return tuple(chosen), http2


def _header_value(header: str, raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise WebConfigError(f"http_server_config.headers.{header} must be a string")
    value = str(raw).replace("\r", " ").replace("\n", " ")  # as Go's net/http writes a header value
    if _CONTROL.search(value):
        raise WebConfigError(f"http_server_config.headers.{header} contains control characters")
    return value


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    interval: float  # seconds between two requests, on average
    burst: int

    def describe(self) -> str:
        return f"rate limit {self.burst} then 1 per {self.interval:g} s"


def parse_rate_limit(doc: object) -> RateLimitSettings | None:
    """rate_limit; None when absent or when interval is 0 (off, as in exporter-toolkit)."""
    name = "rate_limit"
    limit = section(doc, name, RATE_LIMIT_KEYS)
    if limit is None:
        return None
    interval = go_duration(limit.get("interval", 0), f"{name}.interval")
    burst = limit.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise WebConfigError(f"{name}.burst must be an integer")
    if interval == 0:
        return None
    if burst < 1:
        raise WebConfigError(f"{name}.burst must be at least 1 when interval is set: with {burst}, every request "
                             "would be answered 429")
    return RateLimitSettings(interval, burst)


def go_duration(value: object, name: str) -> float:
    """Seconds, from what Go's YAML decoder takes for a time.Duration: a string for time.ParseDuration ("1s",
    "1m30s", "250ms") or an integer, which Go reads as nanoseconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise WebConfigError(f"{name} must be a duration such as 1s or 250ms")
    if isinstance(value, int):
        seconds = value * 1e-9
    else:
        text = value.strip()
        sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
        if body == "0":
            return 0.0
        parts = _DURATION.findall(body)
        if not body or "".join(n + u for n, u in parts) != body:
            raise WebConfigError(f"{name} {value!r} is not a Go duration (e.g. 1s, 250ms, 1m30s)")
        seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0:
        raise WebConfigError(f"{name} must not be negative")
    return seconds


class Allowance:
    """A token bucket: `burst` at once, then one every `interval` seconds (time passed in)."""

    def __init__(self, interval: float, burst: int, now: float) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        """0 when a token was taken; else the seconds until one is due."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) * self.interval


def plain(status: int, body: str, headers: Mapping[str, str]) -> tuple[Message, Message]:
    """A plain-text answer as its two ASGI messages."""
    raw = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"),
           *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body.encode()})


class RateLimit:
    """ASGI middleware: rate_limit for every path but the write endpoints; over it, 429 with Retry-After."""

    def __init__(self, app: ASGIApp, settings: RateLimitSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.clock = clock
        self._bucket: Allowance | None = None
        self.configure(settings)

    def configure(self, settings: RateLimitSettings | None) -> None:
        """A new limit (a reload) starts with a full burst."""
        self._bucket = None if settings is None else Allowance(settings.interval, settings.burst, self.clock())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bucket = self._bucket
        if bucket is not None and scope["type"] == "http" and not str(scope["path"]).startswith(OWN_AUTH_PREFIXES):
            wait = bucket.take(self.clock())
            if wait:
                for message in plain(429, "too many requests (rate_limit)\n", {"Retry-After": str(math.ceil(wait))}):
                    await send(message)
                return
        await self.app(scope, receive, send)


class ResponseHeaders:
    """ASGI middleware: http_server_config.headers on every response (replacing any the app set)."""

    def __init__(self, app: ASGIApp, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.app = app
        self.configure(headers)

    def configure(self, headers: tuple[tuple[str, str], ...]) -> None:
        self._headers = [(k.lower().encode(), v.encode("utf-8")) for k, v in headers]
        self._names = {k for k, _ in self._headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra, names = self._headers, self._names
        if not extra or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept: list[Any] = [(k, v) for k, v in message.get("headers", ()) if bytes(k).lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, with_headers)
