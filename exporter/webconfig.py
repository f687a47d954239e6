"""`--web-config-file`: the web configuration file of Prometheus' own exporters (exporter-toolkit's format,
docs/web-configuration.md there), read and checked as a whole.

    tls_server_config: ...    # exporter/web_tls.py: the keys, and the server SSLContext
    http_server_config: ...   # exporter/web_http.py: response headers, http2 (false: HTTP/1.1 only here)
    basic_auth_users: ...     # exporter/web_basic_auth.py: bcrypt hashes, and the middleware
    rate_limit: ...           # exporter/web_http.py: one token bucket, 429 past it

Every key that exporter-toolkit documents is read; a value this server cannot honour is refused with a
one-line reason (exit code 2 at start; on SIGHUP, logged, and the configuration in force stays), never
dropped. docs/web-config.md documents each key.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from exporter import web_tls
from exporter.web_basic_auth import BasicAuth, parse_users
from exporter.web_fields import WebConfigError, no_unknown_keys
from exporter.web_http import RateLimitSettings, parse_http, parse_rate_limit
from exporter.web_tls import TlsSettings, parse_tls

__all__ = ["BasicAuth", "WebConfig", "WebConfigError", "build_ssl_context", "load_web_config"]

TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"})


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    headers: tuple[tuple[str, str], ...] = ()  # http_server_config.headers that are sent
    http2: bool = False
    rate_limit: RateLimitSettings | None = None

    def describe(self) -> str:
        """For the start-up line: what is on, no secrets."""
        tls = self.tls.describe() if self.tls else "off"
        parts = [f"tls {tls}", f"basic auth {'on' if self.users else 'off'} ({len(self.users)} users)"]
        if self.rate_limit is not None:
            parts.append(self.rate_limit.describe())
        if self.headers:
            parts.append(f"headers {', '.join(name for name, _ in self.headers)}")
        return ", ".join(parts)


def load_web_config(path: Path) -> WebConfig:
    """Parse and check the file, including that the TLS files load. Raises WebConfigError."""
    where = f"--web-config-file {str(path)!r}"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WebConfigError(f"{where}: cannot read: {(exc.strerror or type(exc).__name__).lower()}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise WebConfigError(f"{where}: not valid YAML") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise WebConfigError(f"{where}: expected a mapping at the top level")
    try:
        no_unknown_keys("", doc, TOP_KEYS)
        headers, http2 = parse_http(doc.get("http_server_config"))
        tls = parse_tls(doc.get("tls_server_config"), path.parent)
        config = WebConfig(tls, parse_users(doc.get("basic_auth_users")), headers, http2,
                           parse_rate_limit(doc.get("rate_limit")))
    except WebConfigError as exc:
        raise WebConfigError(f"{where}: {exc}") from None
    build_ssl_context(config, where)  # fail at start, not at the first handshake
    return config


def build_ssl_context(config: WebConfig, where: str = "--web-config-file") -> ssl.SSLContext | None:
    """A server context for config.tls (None without TLS). Raises WebConfigError naming the file at fault."""
    return None if config.tls is None else web_tls.build_ssl_context(config.tls, where)
