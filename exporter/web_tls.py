"""`tls_server_config`: exporter-toolkit's TLS keys, checked, and the server SSLContext built from them.

Go's names become OpenSSL's: cipher suites (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 -> ECDHE-RSA-AES128-GCM-SHA256),
curves (CurveP256 -> P-256), versions (TLS12 -> TLSVersion.TLSv1_2). A value Python's ssl module or OpenSSL
cannot honour is refused with the reason, never dropped. See docs/web-config.md for each key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter import web_openssl
from exporter.logs import RateLimiter
from exporter.web_fields import WebConfigError, boolean, one_of, section, string, string_list

log = logging.getLogger(__name__)

TLS_KEYS = frozenset({
    "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
    "client_allowed_sans", "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
    "curve_preferences",
})
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's tls.ClientAuthType names -> (what the server asks, whether any certificate is accepted unverified).
# RequireClientCert is the old name of RequireAnyClientCert, which exporter-toolkit still accepts.
CLIENT_AUTH: dict[str, tuple[ssl.VerifyMode, bool]] = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, True),
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, True),
    "RequireClientCert": (ssl.CERT_REQUIRED, True),
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, False),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, False),
}
_VERIFYING = frozenset({"VerifyClientCertIfGiven", "RequireAndVerifyClientCert"})
_SANS_NEED = frozenset({"RequireAnyClientCert", "RequireClientCert", "RequireAndVerifyClientCert"})
# Go's tls.CipherSuites() for TLS 1.0-1.2 (the names exporter-toolkit accepts) -> OpenSSL's names.
CIPHER_SUITES: dict[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# In tls.CipherSuites() too, but Go ignores them in its Config (TLS 1.3 suites are not configurable); Python's
# ssl module has no way to choose them either. All three are always on for TLS 1.3.
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
# Go's default suites for TLS 1.0-1.2 (ECDHE only), offered when min_version allows TLS 1.0 or 1.1.
_GO_DEFAULT_SUITES = [v for k, v in CIPHER_SUITES.items() if k.startswith("TLS_ECDHE_")]
# exporter-toolkit's curve names -> OpenSSL group names.
CURVES: dict[str, str] = {"CurveP256": "P-256", "CurveP384": "P-384", "CurveP521": "P-521", "X25519": "X25519"}
_CURVE_SHORT_NAMES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1", "X25519": "X25519"}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = field(default=None, repr=False)  # PEM, inline
    key: str | None = field(default=None, repr=False)  # PEM, inline: a secret
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = field(default=None, repr=False)
    client_allowed_sans: frozenset[str] | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    def describe(self) -> str:
        low, high = self.min_version, self.max_version
        versions = low if low == high else f"{low}-{high}"
        sans = f", {len(self.client_allowed_sans)} allowed SANs" if self.client_allowed_sans else ""
        return f"on ({versions}, client auth {self.client_auth_type}{sans})"


def parse_tls(doc: object, base: Path) -> TlsSettings | None:
    """tls_server_config, checked (not yet loaded: build_ssl_context does that). None when absent or empty."""
    name = "tls_server_config"
    tls = section(doc, name, TLS_KEYS)
    if not tls:
        return None

    def path(key: str) -> Path | None:
        value = string(tls, name, key)
        return None if value is None else base / Path(value).expanduser()

    cert_file, key_file, ca_file = path("cert_file"), path("key_file"), path("client_ca_file")
    cert, key, ca = string(tls, name, "cert"), string(tls, name, "key"), string(tls, name, "client_ca")
    for inline, file in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if tls.get(inline) and tls.get(file):
            raise WebConfigError(f"{name} sets both {inline} and {file}: give one (Go would use {file} and "
                                 f"ignore {inline})")
    if (cert_file is None and cert is None) or (key_file is None and key is None):
        raise WebConfigError(f"{name} needs cert_file (or cert) and key_file (or key) to turn TLS on")
    auth = one_of(string(tls, name, "client_auth_type") or "NoClientCert", f"{name}.client_auth_type", CLIENT_AUTH)
    has_ca = ca_file is not None or ca is not None
    if has_ca and auth == "NoClientCert":
        raise WebConfigError(f"{name}: a client CA is configured but client_auth_type is NoClientCert "
                             "(exporter-toolkit refuses this too)")
    if auth in _VERIFYING and not has_ca:
        raise WebConfigError(f"{name}: client_auth_type {auth} needs client_ca_file or client_ca (Go would trust "
                             "the system's CAs for client certificates; refused here rather than trusting them all)")
    if CLIENT_AUTH[auth][1] and (reason := web_openssl.available()) is not None:
        raise WebConfigError(f"{name}.client_auth_type {auth} cannot be honoured: Python's ssl module verifies "
                             f"every certificate it asks for, and reaching OpenSSL directly failed: {reason}")
    sans = string_list(tls, name, "client_allowed_sans")
    if sans is not None:
        if auth not in _SANS_NEED:
            raise WebConfigError(f"{name}.client_allowed_sans needs client_auth_type RequireAnyClientCert or "
                                 "RequireAndVerifyClientCert (others let a client connect without a certificate)")
        if not sans:
            raise WebConfigError(f"{name}.client_allowed_sans is empty: no client certificate could match")
    low = one_of(string(tls, name, "min_version") or "TLS12", f"{name}.min_version", TLS_VERSIONS)
    high = one_of(string(tls, name, "max_version") or "TLS13", f"{name}.max_version", TLS_VERSIONS)
    if TLS_VERSIONS[low] > TLS_VERSIONS[high]:
        raise WebConfigError(f"{name}: min_version {low} is above max_version {high}")
    suites = _cipher_suites(string_list(tls, name, "cipher_suites") or (), low)
    curves = string_list(tls, name, "curve_preferences") or ()
    for curve in curves:
        one_of(curve, f"{name}.curve_preferences:", CURVES)
    if len(curves) > 1 and (reason := web_openssl.available()) is not None:
        raise WebConfigError(f"{name}.curve_preferences: more than one curve cannot be set: Python's ssl module "
                             f"takes one, and reaching OpenSSL directly failed: {reason}")
    return TlsSettings(cert_file, key_file, cert, key, auth, ca_file, ca,
                       frozenset(sans) if sans is not None else None, low, high, suites,
                       boolean(tls, name, "prefer_server_cipher_suites", True), curves)


def _cipher_suites(names: tuple[str, ...], min_version: str) -> tuple[str, ...]:
    where = "tls_server_config.cipher_suites"
    for suite in names:
        if suite in TLS13_SUITES:
            raise WebConfigError(f"{where}: {suite} is a TLS 1.3 suite, which cannot be chosen (Go ignores it, and "
                                 "Python's ssl cannot set TLS 1.3 suites); the three are always on under TLS 1.3")
        if suite not in CIPHER_SUITES:
            raise WebConfigError(f"{where}: {suite!r} is not one of Go's tls.CipherSuites() for TLS 1.0-1.2 "
                                 "(exporter-toolkit refuses it too)")
    if names and min_version == "TLS13":
        raise WebConfigError(f"{where} apply to TLS 1.2 and below, which min_version TLS13 rules out: "
                             "remove them or lower min_version")
    return names


# ---------------------------------------------------------------------------------------------- the context


class TlsContext(ssl.SSLContext):
    """A server context that also knows its client_allowed_sans (checked by _SanCheckedObject)."""

    client_allowed_sans: frozenset[str] | None = None


class _SanCheckedObject(ssl.SSLObject):
    """Ends the handshake with an error (the connection is closed, no request is read) when the context has
    client_allowed_sans and the client certificate carries none of them: Go's VerifyPeerCertificate."""

    def do_handshake(self) -> None:
        super().do_handshake()
        allowed = getattr(self.context, "client_allowed_sans", None)
        if allowed is None:
            return
        found = certificate_sans(self.getpeercert() or {})
        if found.isdisjoint(allowed):
            if _refusals.allow("sans", time.monotonic()):
                log.warning("TLS: refused a client certificate whose SANs (%s) are not in client_allowed_sans "
                            "(logged at most once a minute)", ", ".join(sorted(found)) or "none")
            raise ssl.SSLCertVerificationError("the client certificate has none of client_allowed_sans")


_refusals = RateLimiter(60.0)


def certificate_sans(cert: Mapping[str, Any]) -> set[str]:
    """The DNS, IP, e-mail and URI SANs of a decoded certificate, IPs written as Go writes them."""
    found: set[str] = set()
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                ip = ipaddress.ip_address(str(value).strip())
            except ValueError:
                continue
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            found.add(str(mapped or ip))
        elif kind in ("DNS", "email", "URI"):
            found.add(str(value))
    return found


def build_ssl_context(tls: TlsSettings, where: str = "--web-config-file") -> TlsContext:
    """The server context for these settings, files loaded now. Raises WebConfigError naming what failed."""
    ctx = TlsContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = _SanCheckedObject
    ctx.client_allowed_sans = tls.client_allowed_sans
    with _pem_file(tls.cert_file, tls.cert) as cert, _pem_file(tls.key_file, tls.key) as key:
        try:
            ctx.load_cert_chain(cert, key, password=_no_password)
        except _EncryptedKey:
            raise WebConfigError(f"{where}: the TLS key is encrypted; give it unencrypted (Go cannot read an "
                                 "encrypted key either)") from None
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{where}: cannot load cert_file/key_file (or cert/key): {_ssl_reason(exc)}") from None
    if tls.client_ca_file is not None or tls.client_ca is not None:
        try:
            if tls.client_ca is not None:
                ctx.load_verify_locations(cadata=tls.client_ca)
            else:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError(f"{where}: cannot load client_ca_file (or client_ca): {_ssl_reason(exc)}") from None
    with warnings.catch_warnings():  # Python deprecates TLS 1.0 and 1.1; min_version asked for them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    _set_ciphers(ctx, tls, where)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    groups = [CURVES[c] for c in tls.curve_preferences]
    try:
        if len(groups) == 1:
            ctx.set_ecdh_curve(_CURVE_SHORT_NAMES[groups[0]])
        elif groups:
            web_openssl.set_groups(ctx, groups)
    except (ValueError, ssl.SSLError, web_openssl.OpenSslUnavailable) as exc:
        raise WebConfigError(f"{where}: this OpenSSL cannot use curve_preferences {', '.join(tls.curve_preferences)}:"
                             f" {exc}") from None
    verify_mode, accept_any = CLIENT_AUTH[tls.client_auth_type]
    ctx.verify_mode = verify_mode
    if accept_any:
        web_openssl.accept_any_client_certificate(ctx)
    ctx.set_alpn_protocols(["http/1.1"])  # the server speaks HTTP/1.1 only (http_server_config.http2)
    return ctx


def _set_ciphers(ctx: ssl.SSLContext, tls: TlsSettings, where: str) -> None:
    wanted = [CIPHER_SUITES[s] for s in tls.cipher_suites]
    old_versions = TLS_VERSIONS[tls.min_version] < ssl.TLSVersion.TLSv1_2
    if not wanted and not old_versions:
        return  # OpenSSL's defaults, as Python sets them
    # OpenSSL 3 refuses TLS 1.0 and 1.1 at its default security level; Go allows them when min_version says
    # so, with its ECDHE suites. Level 0 for this context, with those suites (or the configured ones).
    text = ":".join(wanted or _GO_DEFAULT_SUITES) + (":@SECLEVEL=0" if old_versions else "")
    try:
        ctx.set_ciphers(text)
    except ssl.SSLError:
        raise WebConfigError(f"{where}: this OpenSSL offers none of cipher_suites") from None
    offered = {c["name"] for c in ctx.get_ciphers()}
    for go_name, openssl_name in zip(tls.cipher_suites, wanted, strict=True):
        if openssl_name not in offered:
            raise WebConfigError(f"{where}: this OpenSSL does not offer {go_name} ({openssl_name})")


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey  # never a prompt on the terminal


@contextmanager
def _pem_file(path: Path | None, inline: str | None) -> Iterator[str]:
    """A path OpenSSL can read: the file itself, or the inline PEM in an anonymous memory file (a temporary file
    only readable by this user where memfd_create is missing), gone when the block ends."""
    if path is not None or inline is None:
        yield str(path)
        return
    data = inline.encode("utf-8")
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("web-config-pem", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # mode 0700
        file = Path(directory) / "pem"
        file.write_bytes(data)
        yield str(file)


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "invalid certificate or key").lower().replace("_", " ")
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__).lower()
    return str(exc).lower() or type(exc).__name__


class ReloadableTls(ssl.SSLContext):
    """The context the listener holds: each new connection is wrapped by the context last given to use(), so
    a reload changes every TLS setting for new connections (live ones keep theirs). Its own settings are unused.
    """

    def __new__(cls, current: ssl.SSLContext) -> ReloadableTls:
        return super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)

    def __init__(self, current: ssl.SSLContext) -> None:
        self.current = current

    def use(self, current: ssl.SSLContext) -> None:
        self.current = current

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.current.wrap_bio(incoming, outgoing, server_side, server_hostname, session)
