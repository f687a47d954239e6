"""`--web-config-file`: TLS and basic auth in the exporter-toolkit format that Prometheus' own exporters use.

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to the web config file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, for mTLS
      client_ca_file: ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash

Basic auth guards /metrics, the probes and the index; the write endpoints (/api/..., /webhooks/...) keep their
own bearer tokens. bcrypt is slow on purpose (~100 ms a check), so checks run in a worker thread and a
successful one is remembered under an HMAC of user and password with a key made at start, so that a scrape
every 15 s costs one dict lookup and no password is ever kept in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

TLS_KEYS = frozenset({"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version"})
TOP_KEYS = frozenset({"tls_server_config", "basic_auth_users"})
# exporter-toolkit names -> what Python's ssl module can do. RequestClientCert and RequireAnyClientCert ask for
# a certificate without verifying it, which Python's ssl cannot do: they are refused rather than weakened.
CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
# Paths that authenticate themselves (bearer tokens), so basic auth does not apply to them.
OWN_AUTH_PREFIXES = ("/api/", "/webhooks/")
CACHE_MAX = 1024  # remembered successful checks; cleared when full (a few users, a few passwords each)
REALM = "assistants-exporter"
# Unknown users are checked against this hash (of a random string), so the answer's timing does not say
# which users exist.
_UNKNOWN_USER = b"$2b$10$vBv7RoofS0yvzJ6Mk05Ro.V6.XyNX34eFWWzB//CJ5iSbihqpbdhe"


class WebConfigError(Exception):
    """A one-line reason the web config file is unusable; never contains a hash or a key."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """For the start-up line: what is on, no secrets."""
        tls = f"on ({self.tls.min_version}+, client auth {self.tls.client_auth_type})" if self.tls else "off"
        return f"tls {tls}, basic auth {'on' if self.users else 'off'} ({len(self.users)} users)"


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
    _no_unknown_keys(where, "", doc, TOP_KEYS)
    tls = _tls(where, path.parent, doc.get("tls_server_config"))
    users = _users(where, doc.get("basic_auth_users"))
    config = WebConfig(tls, users)
    if tls is not None:
        build_ssl_context(config, where)  # fail at start, not at the first handshake
    return config


def _no_unknown_keys(where: str, section: str, doc: Mapping[Any, Any], known: frozenset[str]) -> None:
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:
        prefix = f"{section}." if section else ""
        raise WebConfigError(f"{where}: unknown or unsupported key {prefix}{unknown[0]} "
                             f"(supported: {', '.join(sorted(known))})")


def _tls(where: str, base: Path, doc: object) -> TlsSettings | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise WebConfigError(f"{where}: tls_server_config must be a mapping")
    _no_unknown_keys(where, "tls_server_config", doc, TLS_KEYS)
    for key, value in doc.items():
        if not isinstance(value, str) or not value:
            raise WebConfigError(f"{where}: tls_server_config.{key} must be a non-empty string")

    def path(key: str) -> Path | None:
        value = doc.get(key)
        return None if value is None else base / Path(value).expanduser()

    cert, key = path("cert_file"), path("key_file")
    if cert is None or key is None:
        raise WebConfigError(f"{where}: tls_server_config needs both cert_file and key_file")
    auth = doc.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"{where}: tls_server_config.client_auth_type must be one of {', '.join(CLIENT_AUTH)}")
    ca = path("client_ca_file")
    if auth != "NoClientCert" and ca is None:
        raise WebConfigError(f"{where}: client_auth_type {auth} needs tls_server_config.client_ca_file")
    version = doc.get("min_version", "TLS12")
    if version not in TLS_VERSIONS:
        raise WebConfigError(f"{where}: tls_server_config.min_version must be one of {', '.join(TLS_VERSIONS)}")
    return TlsSettings(cert, key, auth, ca, version)


def _users(where: str, doc: object) -> dict[str, bytes]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise WebConfigError(f"{where}: basic_auth_users must be a mapping of user to bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in doc.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"{where}: basic_auth_users: user names must be non-empty strings without ':'")
        encoded = hashed.encode("utf-8") if isinstance(hashed, str) else b""
        if not encoded.startswith(BCRYPT_PREFIXES) or len(encoded) != 60:
            raise WebConfigError(f"{where}: basic_auth_users.{user} is not a bcrypt hash")
        users[user] = encoded
    return users


def build_ssl_context(config: WebConfig, where: str = "--web-config-file") -> ssl.SSLContext | None:
    """A server context for config.tls (None without TLS). Raises WebConfigError naming the file at fault."""
    tls = config.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_tls_files(ctx, tls, where)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    return ctx


def load_tls_files(ctx: ssl.SSLContext, tls: TlsSettings, where: str) -> None:
    """(Re)load the certificate, key and client CA into ctx: new handshakes use them, live connections stay."""
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"{where}: cannot load cert_file/key_file: {_ssl_reason(exc)}") from None
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{where}: cannot load client_ca_file: {_ssl_reason(exc)}") from None


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "invalid certificate or key").lower().replace("_", " ")
    return (exc.strerror or type(exc).__name__).lower()


# ---------------------------------------------------------------------------------------------- basic auth


class BasicAuth:
    """ASGI middleware: HTTP basic auth against bcrypt hashes, for every path but the write endpoints."""

    def __init__(self, app: ASGIApp, users: Mapping[str, bytes] | None = None) -> None:
        self.app = app
        self._key = os.urandom(32)  # process-random: cache keys mean nothing outside this process
        self._users: Mapping[str, bytes] = {}
        self._ok: set[bytes] = set()
        self.set_users(users or {})

    def set_users(self, users: Mapping[str, bytes]) -> None:
        """New users (a reload): checks cached under the old ones no longer count."""
        self._users = dict(users)
        self._ok = set()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._users or str(scope["path"]).startswith(OWN_AUTH_PREFIXES):
            await self.app(scope, receive, send)
            return
        if await self.check(_authorization(scope)):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"www-authenticate", f'Basic realm="{REALM}"'.encode())]})
        await send({"type": "http.response.body", "body": b"unauthorized\n"})

    async def check(self, header: bytes) -> bool:
        """Whether an Authorization header value carries a valid user and password."""
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        users = self._users
        token = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        if token in self._ok:
            return True
        hashed = users.get(user.decode("utf-8", "replace"))
        ok = await asyncio.to_thread(_checkpw, password, hashed or _UNKNOWN_USER)
        if not (ok and hashed is not None):
            return False
        if users is self._users:  # not a check against users a reload has just replaced
            if len(self._ok) >= CACHE_MAX:
                self._ok.clear()
            self._ok.add(token)
        return True


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _authorization(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return b""


def _basic_credentials(header: bytes) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep and user else None
