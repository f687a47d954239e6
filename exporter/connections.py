"""Connection accounting for the HTTP server: a socket that has not sent a complete request holds no slot that
a scrape or a probe needs.

- *Idle* connections (no complete request headers yet, or kept alive between requests) are bounded on their
  own (`max_idle`): past it, the one idle the longest is closed. A client that connects and sends its request
  at once is the newest, never the one closed, however many idle sockets others open and reopen.
- Each connection must deliver a request's headers within `header_timeout`, and at most `max_header_bytes`
  of them (else `431` and the connection is closed).
- *Requests in flight* are capped (`max_requests`, then `503`), and the last `reserve` of them are kept for
  the read-only endpoints (/metrics, /healthz, /readyz): writes cannot take them all.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from exporter.logs import RateLimiter

logger = logging.getLogger("exporter.server")

HEADER_TIMEOUT = 5.0  # seconds from a connection's (or a later request's) first byte to its complete headers
MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE = 1024  # idle connections kept; the process raises its open-file limit to fit them
IDLE_GRACE = 0.5  # seconds a new connection may be idle before it can be closed to make room
MAX_REQUESTS = 256  # requests in flight
RESERVE = 32  # of them, kept for /metrics, /healthz and /readyz
READ_ONLY_PATHS = frozenset({"/", "/metrics", "/healthz", "/readyz"})
# Open files the process needs besides idle sockets: requests, the API, the state file, and the connections
# accepted within the grace.
_FILES_BEYOND_IDLE = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = HEADER_TIMEOUT
    max_connections: int = MAX_REQUESTS  # requests in flight (the name it had when it counted every socket)
    keep_alive: int = 5  # seconds an idle kept-alive connection stays open
    backlog: int = 512  # listen backlog (bind_socket's), and connections accepted per turn of the loop
    max_idle: int = MAX_IDLE
    reserve: int = RESERVE
    max_header_bytes: int = MAX_HEADER_BYTES


class IdleConnections:
    """Connections without a request in progress, oldest first; past `limit`, closes the oldest that has been
    idle for `grace` seconds at least. The grace spares a client that has just connected and whose request is
    on its way: the event loop accepts connections in batches (up to the backlog), before reading any of them."""

    def __init__(self, limit: int, grace: float = IDLE_GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.grace = grace
        self.clock = clock
        self._idle: OrderedDict[object, tuple[float, Callable[[], None]]] = OrderedDict()
        self.closed = 0  # connections closed to make room

    def idle(self, conn: object, close: Callable[[], None]) -> None:
        now = self.clock()
        self._idle[conn] = (now, close)
        self._idle.move_to_end(conn)
        while len(self._idle) > self.limit:
            since, close_oldest = next(iter(self._idle.values()))
            if now - since < self.grace:
                return  # every one is new: over the bound for a moment, until they age or send requests
            self._idle.popitem(last=False)
            self.closed += 1
            close_oldest()

    def busy(self, conn: object) -> None:
        self._idle.pop(conn, None)

    def __len__(self) -> int:
        return len(self._idle)


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards `wanted` (up to the hard limit); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def idle_bound(limits: Limits) -> int:
    """The idle bound that fits the open-file limit (raised first if it can be)."""
    soft = raise_open_file_limit(limits.max_idle + _FILES_BEYOND_IDLE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_idle
    return max(16, min(limits.max_idle, soft - _FILES_BEYOND_IDLE))


_431_BODY = b"request headers too large\n"
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_431_BODY), _431_BODY)
)


class AccountedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the header deadline, the header size cap and the idle bound.

    uvicorn itself only times out idle kept-alive connections: one that opens and sends nothing, or half a
    request line, would hold its place for ever (with h11 and httptools alike).
    """

    header_timeout = HEADER_TIMEOUT
    max_header_bytes = MAX_HEADER_BYTES
    idle_connections = IdleConnections(MAX_IDLE)  # each server gets its own (see protocol_class)
    _header_timer: asyncio.TimerHandle | None = None
    _reading_headers = False
    _header_bytes = 0  # raw bytes of headers that have not ended yet, chunk by chunk
    _parsed_bytes = 0  # bytes of this request's URL and headers, as parsed
    _headers_done = 0
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self.idle_connections.idle(self, self._close_idle)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        done_before = self._headers_done
        super().data_received(data)
        if self._headers_done != done_before:
            self._header_bytes = 0  # the headers ended in this chunk (a next request's start is not counted)
        elif self._reading_headers and not self.transport.is_closing():
            self._header_bytes += len(data)  # headers that never end: cut while they arrive
            if self._header_bytes > self.max_header_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._parsed_bytes = 0
        if self._header_timer is None:  # a later request on a kept-alive connection: its first byte
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._reading_headers = False
        self._headers_done += 1
        if self._parsed_bytes > self.max_header_bytes:  # they arrived in one piece
            self._refuse()
            return
        self.idle_connections.busy(self)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _refuse(self) -> None:
        """431 and close; nothing more of this connection is parsed or served."""
        self._refused = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_431)
            self.transport.close()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self.idle_connections.idle(self, self._close_idle)  # kept alive, waiting for a next request

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.idle_connections.busy(self)
        super().connection_lost(exc)
        _drop_read_callback(self.transport)

    def _close_idle(self) -> None:
        if not self.transport.is_closing():
            logger.debug(
                "closing the connection idle the longest: over %d idle connections", self.idle_connections.limit
            )
            self.transport.close()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.debug("closing a connection that sent no complete request within %gs", self.header_timeout)
            self.transport.close()


def _drop_read_callback(transport: asyncio.BaseTransport) -> None:
    """asyncio's selector transport keeps its read callback as a bound method of itself (CPython 3.11 and
    3.12): a reference cycle that only the cyclic garbage collector frees, with the socket and its addresses,
    ~7 objects per closed connection. At a few hundred connections a second (pushes, scrapes on new connections)
    that was most of the garbage of each young collection, whose 10-25 ms held the event loop. Nothing reads the
    callback once the connection is lost, so the transport is freed by reference counting instead."""
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[attr-defined]


def protocol_class(limits: Limits) -> type[asyncio.Protocol]:
    """A protocol class for one server: its own limits and its own table of idle connections."""
    return type(
        "AccountedProtocol",
        (AccountedProtocol,),
        {
            "header_timeout": limits.header_timeout,
            "max_header_bytes": limits.max_header_bytes,
            "idle_connections": IdleConnections(idle_bound(limits)),
        },
    )


class RequestSlots:
    """ASGI middleware: at most `limit` requests in flight, the last `reserve` only for the read-only paths;
    over that, 503 at once (logged once a minute)."""

    def __init__(self, app: ASGIApp, limit: int, reserve: int) -> None:
        self.app = app
        self.limit = limit
        self.reserve = min(reserve, limit - 1)
        self.active = 0
        self._log = RateLimiter(60.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.limit if scope["path"] in READ_ONLY_PATHS else self.limit - self.reserve
        if self.active >= cap:
            if self._log.allow("full", time.monotonic()):
                logger.warning(
                    "%d requests in flight, over the concurrency limit: answering 503 (logged once a minute)",
                    self.active,
                )
            response = PlainTextResponse(
                "too many requests in flight; retry\n", 503, headers={"Retry-After": "1", "Cache-Control": "no-store"}
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
