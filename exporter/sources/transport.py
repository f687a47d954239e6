"""What makes the API client's requests cheap: httpx's transport with a cheaper check of idle connections,
URLs parsed once, and no cookie jar.

Before each request (and after each response) httpcore's pool asks every idle connection whether the server
closed it: `get_extra_info("is_readable")`, which on anyio looks the socket up through a dict of attribute
getters that anyio builds on every call (and a getpeername() system call). With 8 kept-alive connections
that was ~20 look-ups and ~0.5 ms of CPU per request: a third of a poll's cost. Here each stream looks its
socket up once, and the check itself (a zero-timeout poll of the socket) is unchanged.

httpx parses a request's URL twice (the URL, then with its query) and runs every response through the
standard library's cookie jar: together another ~0.3 ms a request. The API needs no cookies, and a thread's
first page is asked for with the same URL every poll.
"""

from __future__ import annotations

import http.cookiejar
import logging
import ssl
import typing
import urllib.request
from collections.abc import Iterable, Mapping

import httpcore
import httpx
from httpcore._backends.anyio import AnyIOBackend
from httpcore._utils import is_socket_readable

logger = logging.getLogger(__name__)

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class _Stream(httpcore.AsyncNetworkStream):
    """A stream that knows its socket."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return self._socket is not None and is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    """anyio's backend (what httpcore picks under asyncio), handing out streams that know their socket."""

    def __init__(self) -> None:
        self._inner = AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SocketOption] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_READ = httpx.ByteStream(b"")


def release(response: httpx.Response) -> None:
    """Once a response's body is read and its stream closed: httpx's response and its stream refer to each
    other (the stream keeps the response to time it), a cycle that only the cyclic garbage collector frees,
    with the request, the pool's request and their events, ~37 objects a request. At ~50 requests a second
    they made the young collections that held the event loop for 10-25 ms; without the cycle they are freed
    at once by reference counting. Nothing reads the stream of a closed response."""
    response.stream = _READ


def transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's default transport (the same TLS verification and limits) on the backend above."""
    built = httpx.AsyncHTTPTransport(limits=limits)
    pool = getattr(built, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = _Backend()
    else:  # another httpcore: its own backend, slower but correct
        logger.debug("httpcore's pool has no _network_backend; using its default backend")
    return built


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps and sends nothing (httpx.AsyncClient(cookies=NoCookies()))."""

    def extract_cookies(self, response: typing.Any, request: urllib.request.Request) -> None:
        return None

    def add_cookie_header(self, request: urllib.request.Request) -> None:
        return None


URL_CACHE_SIZE = 4096  # URLs kept: a thread's first page is one, later pages (cursors) pass through


# Query parameters; a tuple value repeats its name (LangGraph's `select=a&select=b`).
Params = Mapping[str, str | tuple[str, ...]]


class Urls:
    """httpx.URL objects of (url, query parameters), parsed once."""

    def __init__(self, size: int = URL_CACHE_SIZE) -> None:
        self._size = size
        self._urls: dict[tuple[str, tuple[tuple[str, str | tuple[str, ...]], ...]], httpx.URL] = {}

    def get(self, url: str, params: Params) -> httpx.URL:
        key = (url, tuple(params.items()))
        found = self._urls.get(key)
        if found is None:
            if len(self._urls) >= self._size:
                self._urls.clear()  # start over rather than track use: refilled within one poll interval
            found = self._urls[key] = httpx.URL(url, params=dict(params))  # as httpx.Request builds it
        return found
