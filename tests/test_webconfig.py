"""--web-config-file: the exporter-toolkit format, TLS on the real server, and the basic-auth middleware.

Each key's behaviour on a live server: tests/test_webconfig_keys.py; the documented examples against promtool
and a live exporter: tests/test_webconfig_examples.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from exporter import cli, web_basic_auth, web_openssl
from exporter.server import HttpServer, bind_socket
from exporter.web_basic_auth import CHECKS_AT_ONCE, CHECKS_WAITING, CLIENT_BURST, BasicAuth
from exporter.web_http import go_duration
from exporter.webconfig import WebConfigError, load_web_config
from tests.conftest import FakeTime
from tests.tls_support import Pki, bcrypt_hash, make_pki, server_with_push_route

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


GOOD_TLS = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n"


@pytest.mark.parametrize(("text", "reason"), [
    ("http_server_config:\n  http2: true\n", "http2: true cannot be honoured: the exporter's HTTP server (uvicorn"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "unknown key http_server_config.headers.X-Powered-By"),
    ("http_server_config:\n  headers:\n    x-frame-options: deny\n", "unknown key http_server_config.headers.x-frame"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: DENY\n", "X-Frame-Options must be one of deny, sameorigin"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: ''\n", "X-Frame-Options must be one of deny, sameorigin"),
    ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", "must be one of nosniff"),
    ("http_server_config:\n  headers:\n    X-XSS-Protection: [1]\n", "X-XSS-Protection must be a string"),
    ("http_server_config:\n  headers:\n    Content-Security-Policy: \"a\\u0000b\"\n", "contains control characters"),
    ("http_server_config:\n  http3: true\n", "unknown key http_server_config.http3"),
    ("rate_limit:\n  interval: 1s\n  burst: 0\n", "burst must be at least 1 when interval is set"),
    ("rate_limit:\n  interval: 1d\n  burst: 5\n", "interval '1d' is not a Go duration"),
    ("rate_limit:\n  interval: -1s\n  burst: 5\n", "interval must not be negative"),
    ("rate_limit:\n  interval: 1s\n  burst: '5'\n", "rate_limit.burst must be an integer"),
    ("rate_limit:\n  interval: 1s\n  burst: 5\n  per_client: true\n", "unknown key rate_limit.per_client"),
    ("rate_limit: 5\n", "rate_limit must be a mapping"),
    ("auth_excluded_paths: [/metrics]\n", "unknown key auth_excluded_paths"),
    (GOOD_TLS + "  cipher_suites: [x]\n", "cipher_suites: 'x' is not one of Go's tls.CipherSuites()"),
    (GOOD_TLS + "  cipher_suites: [TLS_RSA_WITH_3DES_EDE_CBC_SHA]\n", "is not one of Go's tls.CipherSuites()"),
    (GOOD_TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite, which"),
    (GOOD_TLS + "  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n",
     "apply to TLS 1.2 and below, which min_version TLS13 rules out"),
    (GOOD_TLS + "  curve_preferences: [P256]\n", "curve_preferences: 'P256' is not one of CurveP256"),
    (GOOD_TLS + "  min_version: TLS13\n  max_version: TLS12\n", "min_version TLS13 is above max_version TLS12"),
    (GOOD_TLS + "  max_version: TLS14\n", "max_version 'TLS14' is not one of"),
    (GOOD_TLS + "  prefer_server_cipher_suites: 'yes please'\n", "prefer_server_cipher_suites must be true or false"),
    (GOOD_TLS + "  client_ca_file: s.crt\n", "a client CA is configured but client_auth_type is NoClientCert"),
    (GOOD_TLS + "  client_allowed_sans: [a]\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: s.crt\n",
     "client_allowed_sans needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert"),
    (GOOD_TLS + "  client_allowed_sans: []\n  client_auth_type: RequireAnyClientCert\n",
     "client_allowed_sans is empty"),
    (GOOD_TLS + "  client_allowed_sans: a\n  client_auth_type: RequireAnyClientCert\n",
     "client_allowed_sans must be a list of non-empty strings"),
    (GOOD_TLS + "  cert: x\n", "sets both cert and cert_file"),
    (GOOD_TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca: x\n  client_ca_file: s.crt\n",
     "sets both client_ca and client_ca_file"),
    (GOOD_TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca: not a pem\n",
     "cannot load client_ca_file (or client_ca)"),
    (GOOD_TLS + "  session_tickets: false\n", "unknown key tls_server_config.session_tickets"),
    ("tls_server_config:\n  cert_file: s.crt\n", "needs cert_file (or cert) and key_file (or key)"),
    ("tls_server_config:\n  min_version: TLS13\n", "needs cert_file (or cert) and key_file (or key)"),
    (GOOD_TLS + "  client_auth_type: RequireAnyClientCert2\n",
     "client_auth_type 'RequireAnyClientCert2' is not one of"),
    (GOOD_TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file or client_ca"),
    (GOOD_TLS + "  min_version: TLS14\n", "min_version 'TLS14' is not one of"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: s.key\n", "cannot load cert_file/key_file"),
    ("tls_server_config:\n  cert_file: s.crt\n  key_file: enc.key\n", "the TLS key is encrypted"),
    ("basic_auth_users:\n  alice: plaintext-secret-1234\n", "basic_auth_users.alice is not a bcrypt hash"),
    ("- a list\n", "expected a mapping"),
    ("basic_auth_users: [\n", "not valid YAML"),
])
def test_bad_web_configs_are_one_line_errors_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str) -> None:
    from cryptography.hazmat.primitives import serialization

    make_pki(tmp_path, "s-")
    (tmp_path / "s-server.crt").rename(tmp_path / "s.crt")
    (tmp_path / "s-server.key").rename(tmp_path / "s.key")
    key = serialization.load_pem_private_key((tmp_path / "s.key").read_bytes(), None)
    (tmp_path / "enc.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key-password")))
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError, match=re.escape(reason)):
        load_web_config(path)
    code = cli.main(["--demo", "--listen", "127.0.0.1:0", "--state-file", str(tmp_path / "s.db"),
                     "--web-config-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and reason in err
    assert "plaintext-secret-1234" not in err


@pytest.mark.parametrize(("keys", "reason"), [
    ("  client_auth_type: RequireAnyClientCert\n", "client_auth_type RequireAnyClientCert cannot be honoured: "
     "Python's ssl module verifies every certificate it asks for, and reaching OpenSSL directly failed: no luck"),
    ("  client_auth_type: RequestClientCert\n", "client_auth_type RequestClientCert cannot be honoured"),
    ("  curve_preferences: [X25519, CurveP256]\n", "more than one curve cannot be set: Python's ssl module takes one"),
])
def test_what_needs_openssl_directly_is_refused_where_it_cannot_be_reached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str, reason: str) -> None:
    pki = make_pki(tmp_path)
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n{keys}")
    assert web_openssl.available() is None  # CPython here: the checks pass, and the keys tests use it
    assert load_web_config(path).tls is not None
    monkeypatch.setattr(web_openssl, "available", lambda: "no luck")
    with pytest.raises(WebConfigError, match=re.escape(reason)):
        load_web_config(path)
    one_curve = tmp_path / "one.yml"
    one_curve.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
                         "  curve_preferences: [CurveP384]\n")
    assert load_web_config(one_curve).tls is not None  # one curve: Python's own set_ecdh_curve


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), ("+0", 0.0), ("-0", 0.0),
    ("0s", 0.0), ("100us", 1e-4), ("100\u00b5s", 1e-4), ("100\u03bcs", 1e-4), ("2h45m0.5s", 9900.5),
    (".5s", 0.5), ("1.s", 1.0), (1_000_000_000, 1.0), (0, 0.0),  # an integer is nanoseconds, as in Go
])
def test_rate_limit_intervals_are_go_durations(text: str | int, seconds: float) -> None:
    assert go_duration(text, "interval") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "1 s", "1S", "1s ms", "--1s", "1.5.5s", "1w", True, 1.5])
def test_what_is_not_a_go_duration_is_refused(text: object) -> None:
    with pytest.raises(WebConfigError):
        go_duration(text, "interval")


def test_rate_limit_off_and_blank_headers_are_accepted_and_said(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("rate_limit:\n  interval: 0\n  burst: 20\nhttp_server_config:\n  http2: false\n  headers:\n"
                    "    Strict-Transport-Security: ''\n    X-XSS-Protection: 0\n    Content-Security-Policy:\n")
    config = load_web_config(path)
    assert config.rate_limit is None  # interval 0: off, as in exporter-toolkit
    assert config.headers == (("X-XSS-Protection", "0"),)  # blank values are not sent ("unset if blank")
    assert config.describe() == "tls off, basic auth off (0 users), headers X-XSS-Protection"


# ---------------------------------------------------------------------------------------------- basic auth


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Downstream:
    """The app behind the middleware: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await Response("ok")(scope, receive, send)


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread id of every bcrypt check."""
    calls: list[int] = []
    real = web_basic_auth._checkpw

    def counted(password: bytes, hashed: bytes) -> bool:
        calls.append(threading.get_ident())
        return real(password, hashed)

    monkeypatch.setattr(web_basic_auth, "_checkpw", counted)
    return calls


def _client(auth: BasicAuth, address: str = "10.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(auth, client=(address, 1234)), base_url="http://t")


async def test_basic_auth_checks_off_the_loop_once_then_from_the_cache(bcrypt_calls: list[int]) -> None:
    down = Downstream()
    auth = BasicAuth(down, {"prometheus": bcrypt_hash("right").encode()})
    async with _client(auth) as client:
        for _ in range(5):
            assert (await client.get("/metrics", headers=_basic("prometheus", "right"))).status_code == 200
        assert len(bcrypt_calls) == 1  # the four scrapes after the first cost no bcrypt
        assert bcrypt_calls[0] != threading.get_ident()  # not on the event loop's thread
        wrong = await client.get("/metrics", headers=_basic("prometheus", "wrong"))
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic ")
        unknown = await client.get("/readyz", headers=_basic("mallory", "right"))
        assert unknown.status_code == 401
        assert len(bcrypt_calls) == 3  # failures are checked every time (and cost as much for unknown users)
        for headers in ({}, {"Authorization": "Basic !!!"}, {"Authorization": "Bearer right"}):
            assert (await client.get("/healthz", headers=headers)).status_code == 401
        # The write endpoints keep their own bearer tokens: basic auth lets them through untouched.
        assert (await client.post("/api/v1/runs")).status_code == 200
        assert (await client.post("/webhooks/x")).status_code == 200
    assert down.paths == ["/metrics"] * 5 + ["/api/v1/runs", "/webhooks/x"]
    assert len(set(bcrypt_calls)) == 1  # one thread of its own for every check


async def test_new_users_void_cached_checks(bcrypt_calls: list[int]) -> None:
    auth = BasicAuth(Downstream(), {"prometheus": bcrypt_hash("old").encode()})
    async with _client(auth) as client:
        assert (await client.get("/metrics", headers=_basic("prometheus", "old"))).status_code == 200
        auth.set_users({"prometheus": bcrypt_hash("new").encode()})
        assert (await client.get("/metrics", headers=_basic("prometheus", "old"))).status_code == 401
        assert (await client.get("/metrics", headers=_basic("prometheus", "new"))).status_code == 200


async def test_a_client_network_gets_a_few_checks_then_one_a_second(bcrypt_calls: list[int]) -> None:
    t = FakeTime()
    auth = BasicAuth(Downstream(), {"prometheus": bcrypt_hash("right").encode()}, clock=t.clock)
    async with _client(auth, "10.0.66.1") as attacker, _client(auth, "10.0.1.1") as prometheus, \
            _client(auth, "10.0.66.2") as neighbour:
        codes = [(await attacker.get("/metrics", headers=_basic("prometheus", f"guess{i}"))).status_code
                 for i in range(CLIENT_BURST + 3)]
        assert codes == [401] * CLIENT_BURST + [429] * 3
        throttled = await attacker.get("/metrics", headers=_basic("prometheus", "right"))
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
        assert len(bcrypt_calls) == CLIENT_BURST  # the throttled attempts cost no bcrypt
        assert (await neighbour.get("/metrics", headers=_basic("prometheus", "n"))).status_code == 429  # same /24
        # Another network is not held back by the first one's failures.
        assert (await prometheus.get("/metrics", headers=_basic("prometheus", "right"))).status_code == 200
        await t.sleep(1.0)
        assert (await attacker.get("/metrics", headers=_basic("prometheus", "again"))).status_code == 401
        assert (await attacker.get("/metrics", headers=_basic("prometheus", "again2"))).status_code == 429
        # A remembered success skips the allowance: the attacker's address is empty, the right password still passes.
        assert (await attacker.get("/metrics", headers=_basic("prometheus", "right"))).status_code == 200
    assert auth.throttled == 6


@pytest.mark.parametrize(("address", "network"), [
    ("10.1.2.3", "10.1.2.0/24"), ("::ffff:10.1.2.3", "10.1.2.0/24"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("-", "-"), ("unix:/run/x.sock", "unix:/run/x.sock"),
])
def test_client_networks(address: str, network: str) -> None:
    assert web_basic_auth.client_network(address) == network


async def test_checks_in_flight_are_capped_and_identical_ones_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    calls: list[bytes] = []

    def slow(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        gate.wait(10)
        return password == b"right"

    monkeypatch.setattr(web_basic_auth, "_checkpw", slow)
    auth = BasicAuth(Downstream(), {"prometheus": bcrypt_hash("right").encode()})
    cap = CHECKS_AT_ONCE + CHECKS_WAITING
    clients = [_client(auth, f"10.1.{i}.1") for i in range(cap + 2)]
    try:
        # The same password, many times at once: one check; then `cap - 1` other passwords fill the queue.
        same = [asyncio.create_task(clients[0].get("/metrics", headers=_basic("prometheus", "right")))
                for _ in range(5)]
        others = [asyncio.create_task(clients[i].get("/metrics", headers=_basic("prometheus", f"wrong{i}")))
                  for i in range(1, cap)]
        while len(auth._in_flight) < cap:
            await asyncio.sleep(0.01)
        over = await clients[cap].get("/metrics", headers=_basic("prometheus", "one-more"))
        assert over.status_code == 429  # at once, while the queue is full, without a check
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*same)] == [200] * 5
        assert [r.status_code for r in await asyncio.gather(*others)] == [401] * (cap - 1)
    finally:
        gate.set()
        for client in clients:
            await client.aclose()
    assert len(calls) == cap  # the five identical attempts cost one check


async def test_a_flood_of_wrong_passwords_does_not_slow_a_remembered_user() -> None:
    """50 wrong passwords a second from many addresses, cost 10: the right user (remembered) is answered as
    fast as without them (bench/bench_basic_auth.py measures it on the real exporter)."""
    auth = BasicAuth(Downstream(), {"prometheus": bcrypt_hash("right", rounds=10).encode()})
    loop = asyncio.get_running_loop()
    async with _client(auth) as prometheus:
        assert (await prometheus.get("/metrics", headers=_basic("prometheus", "right"))).status_code == 200
        stop = loop.time() + 2.0
        codes: list[int] = []

        async def flood(n: int) -> None:  # one attempt a second, from a new address each time
            i = 0
            while loop.time() < stop:
                async with _client(auth, f"10.2.{n}.{i}") as attacker:
                    answer = await attacker.get("/metrics", headers=_basic("prometheus", f"x{n}.{i}"))
                    codes.append(answer.status_code)
                i += 1
                await asyncio.sleep(1.0)

        attackers = [asyncio.create_task(flood(n)) for n in range(50)]
        latencies = []
        while loop.time() < stop:
            started = loop.time()
            assert (await prometheus.get("/metrics", headers=_basic("prometheus", "right"))).status_code == 200
            latencies.append(loop.time() - started)
            await asyncio.sleep(0.02)
        await asyncio.gather(*attackers)
    assert max(latencies) < 0.1, sorted(latencies)[-5:]
    assert auth.checks == 1 + len(codes) - codes.count(429)  # the right user once; the 429s cost no check
    assert 429 in codes  # the queue filled: 100 checks asked for at once, about 13 a second made


# ---------------------------------------------------------------------------------------------- TLS, served


def _write_config(path: Path, pki: Pki, password: str, mtls: bool = False) -> Path:
    lines = ["tls_server_config:", f"  cert_file: {pki.server_cert}", f"  key_file: {pki.server_key}"]
    if mtls:
        lines += ["  client_auth_type: RequireAndVerifyClientCert", f"  client_ca_file: {pki.ca}"]
    lines += ["basic_auth_users:", f"  prometheus: '{bcrypt_hash(password)}'"]
    path.write_text("\n".join(lines) + "\n")
    return path


def trusting(pki: Pki, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Pki, HttpServer]]:
    pki = make_pki(tmp_path)
    web = load_web_config(_write_config(tmp_path / "web.yml", pki, "right"))
    server = server_with_push_route(web)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sock))
    try:
        yield f"127.0.0.1:{port}", pki, server
    finally:
        server.stop()
        await task


async def test_tls_with_basic_auth_and_plain_http_refused(tls_server: tuple[str, Pki, HttpServer]) -> None:
    address, pki, _ = tls_server
    async with httpx.AsyncClient(verify=trusting(pki), timeout=5) as client:
        ok = await client.get(f"https://{address}/metrics", headers=_basic("prometheus", "right"))
        assert ok.status_code == 200
        assert (await client.get(f"https://{address}/metrics", headers=_basic("prometheus", "nope"))).status_code \
            == 401
        assert (await client.post(f"https://{address}/api/v1/runs")).status_code == 200
    async with httpx.AsyncClient(timeout=5) as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://{address}/metrics", headers=_basic("prometheus", "right"))


async def test_reloaded_tls_files_serve_new_connections(tmp_path: Path,
                                                        tls_server: tuple[str, Pki, HttpServer]) -> None:
    address, old, server = tls_server
    new = make_pki(tmp_path, "new-")
    server.reload_web_config(load_web_config(_write_config(tmp_path / "web2.yml", new, "right", mtls=True)))
    auth = _basic("prometheus", "right")
    async with httpx.AsyncClient(verify=trusting(old), timeout=5) as client:
        with pytest.raises(httpx.ConnectError):  # the old CA no longer vouches for the server
            await client.get(f"https://{address}/metrics", headers=auth)
    async with httpx.AsyncClient(verify=trusting(new), timeout=5) as client:
        with pytest.raises(httpx.HTTPError):  # mutual TLS is now required
            await client.get(f"https://{address}/metrics", headers=auth)
    async with httpx.AsyncClient(verify=trusting(new, client_cert=True), timeout=5) as client:
        assert (await client.get(f"https://{address}/metrics", headers=auth)).status_code == 200
    # A context replaced, not amended: the client CA of the first reload is not trusted after the next one.
    other = make_pki(tmp_path, "other-")
    server.reload_web_config(load_web_config(_write_config(tmp_path / "web3.yml", other, "right", mtls=True)))
    stale = ssl.create_default_context(cafile=str(other.ca))
    stale.load_cert_chain(new.client_cert, new.client_key)
    async with httpx.AsyncClient(verify=stale, timeout=5) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"https://{address}/metrics", headers=auth)
    async with httpx.AsyncClient(verify=trusting(other, client_cert=True), timeout=5) as client:
        assert (await client.get(f"https://{address}/metrics", headers=auth)).status_code == 200


async def test_turning_tls_off_needs_a_restart(tmp_path: Path, tls_server: tuple[str, Pki, HttpServer]) -> None:
    _, _, server = tls_server
    path = tmp_path / "plain.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('x')}'\n")
    with pytest.raises(WebConfigError, match="needs a restart"):
        server.reload_web_config(load_web_config(path))
    assert server.tls
