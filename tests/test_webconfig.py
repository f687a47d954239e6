"""--web-config-file: the exporter-toolkit format, TLS on the real server, and the basic-auth middleware."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.registry import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from exporter import cli, webconfig
from exporter.server import HttpServer, bind_socket
from exporter.webconfig import BasicAuth, WebConfigError, build_ssl_context, load_web_config
from tests.helpers import REPO_ROOT, require_binary
from tests.tls_support import Pki, bcrypt_hash, make_pki

pytestmark = pytest.mark.anyio

EXAMPLE_PASSWORD = "example-password"  # what the documented hash is the hash of (docs/web-config.md)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def documented_examples() -> list[str]:
    """Every web config example in README.md and docs/web-config.md (YAML blocks with tls_server_config)."""
    blocks = []
    for doc in (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "web-config.md"):
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            if block.startswith("tls_server_config:"):
                blocks.append(block)
    return blocks


def example_dir(tmp_path: Path, example: str, index: int) -> Path:
    """The example with the certificate files it names (server.crt, server.key, ca.crt) beside it."""
    directory = tmp_path / f"example{index}"
    directory.mkdir()
    pki = make_pki(directory)
    pki.server_cert.rename(directory / "server.crt")
    pki.server_key.rename(directory / "server.key")
    path = directory / "web.yml"
    path.write_text(example)
    return path


def test_the_documented_examples_load_and_the_hash_is_of_the_documented_password(tmp_path: Path) -> None:
    examples = documented_examples()
    assert len(examples) >= 3  # README's, and docs' two (TLS + basic auth, mutual TLS)
    for i, example in enumerate(examples):
        config = load_web_config(example_dir(tmp_path, example, i))
        assert config.tls is not None
        assert build_ssl_context(config) is not None
        for hashed in config.users.values():
            assert webconfig._checkpw(EXAMPLE_PASSWORD.encode(), hashed)


@pytest.mark.prometheus
def test_promtool_accepts_the_documented_examples(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    for i, example in enumerate(documented_examples()):
        path = example_dir(tmp_path, example, i)
        done = subprocess.run([promtool, "check", "web-config", str(path)], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("text", "reason"), [
    ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  cipher_suites: [x]\n",
     "unknown or unsupported key tls_server_config.cipher_suites"),
    ("http_server_config:\n  http2: false\n", "unknown or unsupported key http_server_config"),
    ("tls_server_config:\n  cert_file: s.crt\n", "needs both cert_file and key_file"),
    ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth_type: RequireAnyClientCert\n",
     "client_auth_type must be one of"),
    ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth_type: RequireAndVerifyClientCert\n",
     "needs tls_server_config.client_ca_file"),
    ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  min_version: TLS14\n", "min_version must be"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: s.key\n", "cannot load cert_file/key_file"),
    ("basic_auth_users:\n  alice: plaintext-secret-1234\n", "basic_auth_users.alice is not a bcrypt hash"),
    ("- a list\n", "expected a mapping"),
    ("basic_auth_users: [\n", "not valid YAML"),
])
def test_bad_web_configs_are_one_line_errors_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str) -> None:
    make_pki(tmp_path, "s-")
    (tmp_path / "s-server.crt").rename(tmp_path / "s.crt")
    (tmp_path / "s-server.key").rename(tmp_path / "s.key")
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
    real = webconfig._checkpw

    def counted(password: bytes, hashed: bytes) -> bool:
        calls.append(threading.get_ident())
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "_checkpw", counted)
    return calls


async def test_basic_auth_checks_off_the_loop_once_then_from_the_cache(bcrypt_calls: list[int]) -> None:
    down = Downstream()
    auth = BasicAuth(down, {"prometheus": bcrypt_hash("right").encode()})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(auth), base_url="http://t") as client:
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


async def test_new_users_void_cached_checks(bcrypt_calls: list[int]) -> None:
    auth = BasicAuth(Downstream(), {"prometheus": bcrypt_hash("old").encode()})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(auth), base_url="http://t") as client:
        assert (await client.get("/metrics", headers=_basic("prometheus", "old"))).status_code == 200
        auth.set_users({"prometheus": bcrypt_hash("new").encode()})
        assert (await client.get("/metrics", headers=_basic("prometheus", "old"))).status_code == 401
        assert (await client.get("/metrics", headers=_basic("prometheus", "new"))).status_code == 200


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

    async def push(request: Request) -> Response:
        return Response("pushed")

    server = HttpServer(CollectorRegistry(), lambda: (True, "ok"), lambda: (True, "ok"),
                        routes=[Route("/api/v1/runs", push, methods=["POST"])],
                        ssl_context=build_ssl_context(web), basic_auth_users=web.users)
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


async def test_turning_tls_off_needs_a_restart(tmp_path: Path, tls_server: tuple[str, Pki, HttpServer]) -> None:
    _, _, server = tls_server
    path = tmp_path / "plain.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('x')}'\n")
    with pytest.raises(WebConfigError, match="needs a restart"):
        server.reload_web_config(load_web_config(path))
    assert server.tls
