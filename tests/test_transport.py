"""The API client's transport: kept-alive connections reused, ones the server closed noticed, URLs parsed once,
no cookies kept or sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from exporter.sources.api import ApiSettings
from exporter.sources.http import ApiClient
from exporter.sources.transport import NoCookies, Urls, transport
from tests.helpers import cyclic_garbage


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[tuple[int, str, str | None]] = []  # (client port, path, Cookie header)

    def do_GET(self) -> None:
        self.seen.append((self.client_address[1], self.path, self.headers.get("Cookie")))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "session=abc; Path=/")
        close = self.path.startswith("/close")
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = close

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def _get_all(base: str, paths: list[str]) -> list[int]:
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    async with httpx.AsyncClient(transport=transport(limits), cookies=NoCookies()) as client:
        return [(await client.get(base + path)).status_code for path in paths]


def test_connections_are_kept_alive_and_a_closed_one_is_replaced(server: str) -> None:
    assert asyncio.run(_get_all(server, ["/a", "/b", "/close", "/c", "/d"])) == [200] * 5
    ports = [port for port, _, _ in _Handler.seen]
    assert ports[0] == ports[1] == ports[2]  # one connection, kept alive
    assert ports[3] != ports[2] and ports[3] == ports[4]  # the server closed it: a new one, kept alive


def test_no_cookie_is_kept_or_sent(server: str) -> None:
    asyncio.run(_get_all(server, ["/a", "/b"]))
    assert [cookie for _, _, cookie in _Handler.seen] == [None, None]


def test_urls_are_parsed_once_and_equal_what_httpx_builds() -> None:
    urls = Urls(size=3)
    client = httpx.Client()
    params = {"order": "desc", "limit": "100", "api-version": "2025-01-01"}
    for base in ("http://h:1/v1/threads/t%2F1/runs", "https://example.com/openai/threads/x/runs?x=1"):
        built = urls.get(base, params)
        assert built is urls.get(base, dict(params))
        assert str(built) == str(client.build_request("GET", base, params=params).url)
    for n in range(5):  # past its size it starts over, still right
        assert str(urls.get("http://h/p", {"after": str(n)})) == f"http://h/p?after={n}"


def test_the_api_clients_requests_leave_no_cyclic_garbage(server: str) -> None:
    """A request's response, stream and request are freed by reference counting once the body is read:
    httpx's response and stream refer to each other, and the cyclic collector's collections hold the loop."""

    garbage: list[object] = []

    async def fetch_all() -> list[bytes | None]:
        client = ApiClient(ApiSettings(base_url=server, api_key="k", max_requests_per_second=1000.0))
        try:
            await client.get_page("/warm", {}, "list_runs")  # the connection and the client, made once
            with cyclic_garbage() as found:
                bodies = [await client.get_page(f"/p{i}", {}, "list_runs") for i in range(30)]
            garbage.extend(found)
            return bodies
        finally:
            await client.aclose()

    assert asyncio.run(fetch_all()) == [b'{"ok": true}'] * 30
    assert [type(o).__qualname__ for o in garbage if type(o).__module__.startswith(("httpx", "httpcore"))] == []
