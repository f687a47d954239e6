"""Each key of the web config file, on a live server (HttpServer on its own loop, real TLS handshakes from
http.client): what exporter-toolkit documents it to do, done.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.server import HttpServer, bind_socket
from exporter.webconfig import load_web_config
from tests.helpers import wait_until
from tests.tls_support import Pki, bcrypt_hash, client_cert, make_pki, server_with_push_route

REFUSED = "refused"


@dataclass
class Served:
    port: int
    server: HttpServer
    pki: Pki
    directory: Path

    def reload(self, text: str) -> None:
        self.server.reload_web_config(load_web_config(_write(self.directory, self.pki, text, "web2.yml")))


def _write(directory: Path, pki: Pki, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text.format(cert=pki.server_cert, key=pki.server_key, ca=pki.ca))
    return path


@contextmanager
def serving(tmp_path: Path, text: str) -> Iterator[Served]:
    """The server with this web config ({cert}, {key} and {ca} filled in), on its own loop in a thread."""
    pki = make_pki(tmp_path)
    web = load_web_config(_write(tmp_path, pki, text))
    server = server_with_push_route(web)
    sock = bind_socket("127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(sock)), daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="server started")
    try:
        yield Served(sock.getsockname()[1], server, pki, tmp_path)
    finally:
        server.stop()
        thread.join(10)
        loop.close()


def context(pki: Pki, cert: tuple[Path, Path] | None = None, ciphers: str | None = None,
            versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None, curve: str | None = None,
            alpn: Sequence[str] = ()) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if versions is not None:
            ctx.minimum_version, ctx.maximum_version = versions
            if versions[0] < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    version: str | None
    cipher: str | None
    alpn: str | None


def fetch(port: int, ctx: ssl.SSLContext | None, path: str = "/metrics", method: str = "GET",
          headers: dict[str, str] | None = None) -> Answer | str:
    """One request on a new connection; REFUSED when the handshake or the connection is cut."""
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        sock = conn.sock
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      tls.version() if tls else None, tls.cipher()[0] if tls and tls.cipher() else None,
                      tls.selected_alpn_protocol() if tls else None)
    except (OSError, http.client.HTTPException):
        return REFUSED
    finally:
        conn.close()


def status(answer: Answer | str) -> int | str:
    return answer.status if isinstance(answer, Answer) else answer


TLS = "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"


# ---------------------------------------------------------------------------------------------- client auth


@pytest.mark.parametrize(("auth", "no_cert", "ca_signed", "self_signed"), [
    ("NoClientCert", 200, 200, 200),
    ("RequestClientCert", 200, 200, 200),
    ("RequireAnyClientCert", REFUSED, 200, 200),
    ("RequireClientCert", REFUSED, 200, 200),  # the old name, which exporter-toolkit still accepts
    ("VerifyClientCertIfGiven", 200, 200, REFUSED),
    ("RequireAndVerifyClientCert", REFUSED, 200, REFUSED),
])
def test_client_auth_type_asks_requires_and_verifies_as_go_does(
        tmp_path: Path, auth: str, no_cert: int | str, ca_signed: int | str, self_signed: int | str) -> None:
    ca = "" if auth in ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert") \
        else "  client_ca_file: {ca}\n"
    with serving(tmp_path, TLS + f"  client_auth_type: {auth}\n" + ca) as s:
        signed = client_cert(s.pki, tmp_path, "signed", ["prometheus.example"])
        own = client_cert(s.pki, tmp_path, "own", ["prometheus.example"], self_signed=True)
        assert status(fetch(s.port, context(s.pki))) == no_cert
        assert status(fetch(s.port, context(s.pki, signed))) == ca_signed
        assert status(fetch(s.port, context(s.pki, own))) == self_signed


ALLOWED = ["prometheus.example", "spiffe://cluster.local/ns/monitoring/sa/prometheus", "ops@example.com",
           "10.0.0.7", "2001:db8::7", "192.0.2.1"]


@pytest.mark.parametrize("auth", ["RequireAndVerifyClientCert", "RequireAnyClientCert"])
def test_client_allowed_sans_lets_in_only_certificates_carrying_one(tmp_path: Path, auth: str) -> None:
    sans = "".join(f"    - {san}\n" for san in ALLOWED)
    ca = "  client_ca_file: {ca}\n" if auth == "RequireAndVerifyClientCert" else ""
    with serving(tmp_path, TLS + f"  client_auth_type: {auth}\n" + ca + "  client_allowed_sans:\n" + sans) as s:
        for i, san in enumerate(ALLOWED[:5]):
            cert = client_cert(s.pki, tmp_path, f"ok{i}", ["other.example", san])
            assert status(fetch(s.port, context(s.pki, cert))) == 200, san
        # Go writes an IPv4-mapped IPv6 SAN as the IPv4 address.
        mapped = client_cert(s.pki, tmp_path, "mapped", ["::ffff:192.0.2.1"])
        assert status(fetch(s.port, context(s.pki, mapped))) == 200
        for name, sans_of_cert in (("other", ["other.example", "10.0.0.8", "spiffe://cluster.local/ns/x/sa/y"]),
                                   ("none", []), ("case", ["Prometheus.Example"]), ("sub", ["a.prometheus.example"])):
            cert = client_cert(s.pki, tmp_path, name, sans_of_cert)
            assert status(fetch(s.port, context(s.pki, cert))) == REFUSED, name
        assert status(fetch(s.port, context(s.pki))) == REFUSED  # no certificate, no SAN
        if auth == "RequireAndVerifyClientCert":
            own = client_cert(s.pki, tmp_path, "own", ["prometheus.example"], self_signed=True)
            assert status(fetch(s.port, context(s.pki, own))) == REFUSED  # the SAN does not replace the chain
        # A reload changes the list for new connections.
        s.reload(TLS + f"  client_auth_type: {auth}\n" + ca + "  client_allowed_sans: [other.example]\n")
        cert = client_cert(s.pki, tmp_path, "other2", ["other.example"])
        assert status(fetch(s.port, context(s.pki, cert))) == 200
        assert status(fetch(s.port, context(s.pki, client_cert(s.pki, tmp_path, "p", ALLOWED[:1])))) == REFUSED


def test_inline_cert_key_and_client_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "inline-")

    def block(key: str, path: Path) -> str:
        return f"  {key}: |\n" + "".join(f"    {line}\n" for line in path.read_text().splitlines())

    text = ("tls_server_config:\n" + block("cert", pki.server_cert) + block("key", pki.server_key)
            + block("client_ca", pki.ca) + "  client_auth_type: RequireAndVerifyClientCert\n")
    with serving(tmp_path, text) as s:
        assert s.server.tls
        assert status(fetch(s.port, context(pki, (pki.client_cert, pki.client_key)))) == 200
        assert status(fetch(s.port, context(pki))) == REFUSED
        assert "BEGIN" not in repr(load_web_config(s.directory / "web.yml"))  # the key stays out of reprs


# ---------------------------------------------------------------------------------------------- versions, suites


V = ssl.TLSVersion


@pytest.mark.parametrize(("keys", "client", "expected"), [
    ("", (V.TLSv1_2, V.TLSv1_3), "TLSv1.3"),
    ("", (V.TLSv1_1, V.TLSv1_1), REFUSED),  # min_version defaults to TLS12
    ("  max_version: TLS12\n", (V.TLSv1_2, V.TLSv1_3), "TLSv1.2"),
    ("  min_version: TLS13\n", (V.TLSv1_2, V.TLSv1_2), REFUSED),
    ("  min_version: TLS13\n", (V.TLSv1_2, V.TLSv1_3), "TLSv1.3"),
    ("  min_version: TLS10\n", (V.TLSv1, V.TLSv1), "TLSv1"),  # OpenSSL's security level lowered to allow it
    ("  min_version: TLS11\n  max_version: TLS11\n", (V.TLSv1_1, V.TLSv1_3), "TLSv1.1"),
])
def test_min_and_max_version(tmp_path: Path, keys: str, client: tuple[V, V], expected: str) -> None:
    with serving(tmp_path, TLS + keys) as s:
        answer = fetch(s.port, context(s.pki, versions=client))
        assert (answer.version if isinstance(answer, Answer) else answer) == expected


def test_cipher_suites_are_the_only_ones_offered_up_to_tls12(tmp_path: Path) -> None:
    keys = ("  max_version: TLS12\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n"
            "    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n")
    with serving(tmp_path, TLS + keys) as s:
        answer = fetch(s.port, context(s.pki))
        assert isinstance(answer, Answer) and answer.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
        assert fetch(s.port, context(s.pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")) == REFUSED


@pytest.mark.parametrize(("prefer", "expected"), [
    ("true", "ECDHE-ECDSA-AES128-GCM-SHA256"), ("false", "ECDHE-ECDSA-CHACHA20-POLY1305")])
def test_prefer_server_cipher_suites_picks_whose_order_wins(tmp_path: Path, prefer: str, expected: str) -> None:
    keys = ("  max_version: TLS12\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n"
            f"    - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n  prefer_server_cipher_suites: {prefer}\n")
    with serving(tmp_path, TLS + keys) as s:
        client_order = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
        answer = fetch(s.port, context(s.pki, ciphers=client_order))
        assert isinstance(answer, Answer) and answer.cipher == expected


@pytest.mark.parametrize(("curves", "accepted", "refused"), [
    ("[CurveP384]", ["secp384r1"], ["prime256v1", "X25519"]),
    ("[X25519, CurveP256]", ["X25519", "prime256v1"], ["secp384r1", "secp521r1"]),
    ("[CurveP521, CurveP384]", ["secp521r1", "secp384r1"], ["X25519"]),
])
def test_curve_preferences_are_the_only_groups_accepted(
        tmp_path: Path, curves: str, accepted: list[str], refused: list[str]) -> None:
    # TLS 1.3: the client's one group is its key share alone (under TLS 1.2 it would also have to be the curve of
    # the server's P-256 certificate).
    tls13 = (V.TLSv1_3, V.TLSv1_3)
    with serving(tmp_path, TLS + f"  curve_preferences: {curves}\n") as s:
        for curve in accepted:
            assert status(fetch(s.port, context(s.pki, curve=curve, versions=tls13))) == 200, curve
        for curve in refused:
            assert fetch(s.port, context(s.pki, curve=curve, versions=tls13)) == REFUSED, curve
        # TLS 1.2 uses them for ECDHE too: a client offering only P-256 (the certificate's curve).
        tls12 = context(s.pki, curve="prime256v1", versions=(V.TLSv1_2, V.TLSv1_2))
        assert status(fetch(s.port, tls12)) == (200 if "prime256v1" in accepted else REFUSED)


# ---------------------------------------------------------------------------------------------- http_server_config


def test_http2_false_is_what_the_server_does_over_alpn(tmp_path: Path) -> None:
    with serving(tmp_path, TLS + "http_server_config:\n  http2: false\n") as s:
        answer = fetch(s.port, context(s.pki, alpn=["h2", "http/1.1"]))
        assert isinstance(answer, Answer) and answer.alpn == "http/1.1"
        # A client that speaks only HTTP/2 gets no protocol agreed (and no HTTP/2).
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw, \
                context(s.pki, alpn=["h2"]).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() is None


def test_headers_are_sent_on_every_response(tmp_path: Path) -> None:
    headers = {"Strict-Transport-Security": "max-age=31536000; includeSubDomains", "X-Content-Type-Options": "nosniff",
               "X-Frame-Options": "sameorigin", "X-XSS-Protection": "1; mode=block",
               "Content-Security-Policy": "default-src 'none'"}
    config = (TLS + "http_server_config:\n  headers:\n" + "".join(f'    {k}: "{v}"\n' for k, v in headers.items())
              + f"basic_auth_users:\n  prometheus: '{bcrypt_hash('right')}'\nrate_limit:\n  interval: 1m\n  burst: 4\n")
    right = {"Authorization": "Basic " + base64.b64encode(b"prometheus:right").decode()}
    with serving(tmp_path, config) as s:
        ctx = context(s.pki)
        answers = [fetch(s.port, ctx, headers=right), fetch(s.port, ctx), fetch(s.port, ctx, "/nowhere", headers=right),
                   fetch(s.port, ctx, "/api/v1/runs", "POST"), fetch(s.port, ctx, headers=right),
                   fetch(s.port, ctx, headers=right)]
        assert [status(a) for a in answers] == [200, 401, 404, 200, 200, 429]
        for answer in answers:
            assert isinstance(answer, Answer)
            assert {k.lower(): v for k, v in headers.items()}.items() <= answer.headers.items()
        s.reload(TLS + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
        answer = fetch(s.port, ctx)
        assert isinstance(answer, Answer) and answer.headers["x-frame-options"] == "deny"
        assert "content-security-policy" not in answer.headers


# ---------------------------------------------------------------------------------------------- rate_limit


def test_rate_limit_answers_429_past_the_burst_and_spares_the_write_endpoints(tmp_path: Path) -> None:
    with serving(tmp_path, "rate_limit:\n  interval: 200ms\n  burst: 3\n") as s:
        codes = [status(fetch(s.port, None, "/healthz")) for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        limited = fetch(s.port, None, "/metrics")
        assert isinstance(limited, Answer) and limited.status == 429 and limited.headers["retry-after"] == "1"
        assert [status(fetch(s.port, None, "/api/v1/runs", "POST")) for _ in range(5)] == [200] * 5
        wait_until(lambda: status(fetch(s.port, None, "/healthz")) == 200, timeout=5, what="a token after 200ms")
        s.reload("rate_limit:\n  interval: 0\n")  # off
        assert [status(fetch(s.port, None, "/healthz")) for _ in range(10)] == [200] * 10
