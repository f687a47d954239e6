"""Addresses in the configuration: the API's URL, a shard peer's URL template, and listen addresses."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from exporter.flags import ConfigError, Flag, Raw, as_list, as_str, fail

# Paths the exporter serves itself: the metrics cannot move onto one of them.
RESERVED_PATHS = ("/", "/healthz", "/readyz")
RESERVED_PREFIXES = ("/api/", "/webhooks/")


def api_url(flag: Flag, raw: Raw) -> str:
    """An http(s) URL without credentials, query or fragment; no trailing slash."""
    text = as_str(flag, raw) or ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        fail(flag, raw, "expected an http(s) URL")
    if parts.username is not None or parts.password is not None:
        # Don't echo the value: the user part may be a credential.
        raise ConfigError(f"{flag.name}: credentials in the URL are not allowed (from {raw.origin}); "
                          "use OPENAI_API_KEY or --api-key-file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(flag, raw, "expected an http(s) URL")
    if parts.query or parts.fragment:
        # Not echoed: a query string is where a careless user might put a key.
        raise ConfigError(f"{flag.name}: expected a URL without a query or fragment (from {raw.origin}); "
                          "use --api-version for api-version")
    return text.rstrip("/")


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT' or ':PORT' (all interfaces) -> (bare host, port). Raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})", text)
        if not match or ":" not in match.group(1):
            raise ValueError("expected [IPV6]:PORT")
        host, port_text = match.group(1), match.group(2)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or len(port_text) > 5:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("an IPv6 host must be in brackets, e.g. [::1]:9788")
        if host and not re.fullmatch(r"[A-Za-z0-9.\-_]+", host):
            raise ValueError("expected HOST:PORT")
        host = host or "0.0.0.0"
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0..65535")
    return host, port


def peer_url(flag: Flag, raw: Raw) -> str:
    """A URL template with {shard} for the shard's number, checked as a URL with {shard} filled in."""
    text = as_str(flag, raw) or ""
    if "{shard}" not in text:
        fail(flag, raw, "must contain {shard}")
    api_url(flag, Raw(text.replace("{shard}", "0"), raw.origin))
    return text


def listen_address(flag: Flag, raw: Raw) -> str:
    """HOST:PORT as given, once parse_listen accepts it."""
    try:
        host, port = parse_listen(as_str(flag, raw) or "")
    except ValueError as exc:
        fail(flag, raw, str(exc))
    return format_listen(host, port)


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_addresses(flag: Flag, raw: Raw) -> tuple[str, ...]:
    """One or more HOST:PORT; each is served."""
    addresses = tuple(listen_address(flag, Raw(text, raw.origin)) for text in as_list(flag, raw))
    if not addresses:
        fail(flag, raw, "expected at least one HOST:PORT")
    return addresses


def telemetry_path(flag: Flag, raw: Raw) -> str:
    """An absolute URL path for /metrics, not one the exporter serves for something else."""
    path = as_str(flag, raw) or ""
    if not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*", path) or "//" in path:
        fail(flag, raw, "expected an absolute URL path such as /metrics")
    taken = [p for p in RESERVED_PATHS if path.rstrip("/") == p.rstrip("/")]
    taken += [p for p in RESERVED_PREFIXES if path.startswith(p) or path == p.rstrip("/")]
    if taken:
        fail(flag, raw, f"{taken[0]} is served by the exporter itself; choose another path")
    return path
