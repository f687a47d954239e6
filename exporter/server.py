"""HTTP for /metrics, /healthz, /readyz and the write endpoints other modules add: uvicorn + starlette,
on the daemon's own asyncio event loop.

/metrics pages are rendered when a scrape asks, once per change, and shared by concurrent scrapes
(exporter/pages.py).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import html
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.connections import Limits, RequestSlots, protocol_class
from exporter.logs import RateLimiter
from exporter.pages import MetricsPages
from exporter.web_http import RateLimit, ResponseHeaders
from exporter.web_tls import ReloadableTls
from exporter.webconfig import BasicAuth, WebConfig, WebConfigError, build_ssl_context

logger = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
Encoder = Callable[[Any], bytes]

_TEXT = "text/plain; charset=utf-8"
# Listen backlog: room for a burst of scrapers and pushers connecting at once (the kernel caps it at somaxconn).
BACKLOG = 512
# On stop, responses still being written get this long before their connections are cut.
GRACEFUL_SHUTDOWN = 2


class PortInUseError(Exception):
    """The listen address is already taken by another process."""


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """Bind and listen now, so that a taken port fails startup before anything else runs.

    Raises PortInUseError, or OSError with a one-line message naming the address.
    """
    where = _display(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections of a
    # socket whose proto is TCP, and with proto 0 a response written as headers then body waited for the
    # client's delayed ACK: 40 ms on every request of a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old connections are in TIME_WAIT
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"cannot listen on {where}: address already in use") from None
        reason = exc.strerror or type(exc).__name__
        raise OSError(exc.errno, f"cannot listen on {where}: {reason.lower()}") from None
    sock.set_inheritable(False)
    return sock


# ---------------------------------------------------------------------------------------------------------------
# Helpers for write endpoints (push, webhooks), which other modules add through HttpServer(routes=...).


async def read_body(request: Request, limit: int, timeout: float = 10.0) -> bytes:
    """The request body, at most `limit` bytes, arriving within `timeout` seconds.

    413 (and the connection is closed) as soon as the body is known to exceed the cap, from Content-Length or
    while streaming, so no more than the cap plus one chunk is ever read; 408 when it arrives too slowly.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(408, "request body not received in time", headers={"Connection": "close"}) from None
    return b"".join(chunks)


def _too_large(limit: int) -> HTTPException:
    # Closing the connection keeps the server from reading (and discarding) the rest of the body.
    return HTTPException(413, f"request body larger than {limit} bytes", headers={"Connection": "close"})


def require_bearer(request: Request, tokens: Sequence[str]) -> None:
    """401 unless the request carries `Authorization: Bearer <t>` for one of `tokens` (several, so that a
    rotation can keep the old one valid); constant-time comparison with every token.

    No token configured refuses everything. The presented value never appears in the error.
    """
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    offered = presented.strip().encode("utf-8")
    same = False
    for token in tokens:  # compare with all of them, so the time says nothing about which one matched
        same |= hmac.compare_digest(offered, token.encode("utf-8"))
    if not (scheme.lower() == "bearer" and offered and same):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------------------------------------------------------
# The application.


_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>assistants-exporter</title></head>
<body><h1>assistants-exporter</h1>
<ul>
<li><a href="{metrics}">{metrics}</a></li>
<li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li>
</ul></body></html>
"""
_READ_METHODS = ("GET", "HEAD")
# Routed for every method so that _read_only answers the 405 (starlette routes only GET and HEAD by default).
_ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
_NO_STORE = {"Cache-Control": "no-store"}


def _text(status: int, body: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(body, status, headers={**_NO_STORE, **(headers or {})}, media_type=_TEXT)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown"


def _run_check(check: Check, name: str) -> tuple[bool, str]:
    try:
        ok, reason = check()
    except Exception as exc:  # a broken check must not take the endpoint down with a 500
        logger.warning("%s check raised %s", name, type(exc).__name__, exc_info=True)
        return False, f"{name} check failed: {type(exc).__name__}"
    return bool(ok), _one_line(reason)


def _read_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """GET and HEAD only, with the exact Allow header (starlette's own 405 lists a set in any order)."""
    async def endpoint(request: Request) -> Response:
        if request.method not in _READ_METHODS:
            return _text(405, "method not allowed\n", {"Allow": ", ".join(_READ_METHODS)})
        return await handler(request)
    return endpoint


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _text(exc.status_code, _one_line(exc.detail) + "\n", dict(exc.headers or {}))


class _DebugAccessLog:
    """Request lines at DEBUG only; costs one isEnabledFor() per request otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.DEBUG):
            await self.app(scope, receive, send)
            return
        status = [0]

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = (scope.get("client") or ("-",))[0]
            logger.debug("%s %s %s %d", client, scope["method"], scope["path"], status[0])


def make_app(pages: MetricsPages, health: Check, ready: Check,
             routes: Sequence[BaseRoute] = (), telemetry_path: str = "/metrics") -> ASGIApp:
    """The ASGI app: the read-only endpoints plus the extra (write) routes other modules provide."""
    index_page = _INDEX.format(metrics=html.escape(telemetry_path))

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        names = request.query_params.getlist("name[]")
        use_gzip = gzip_accepted(request.headers.get("accept-encoding", ""))
        headers = {**_NO_STORE, "Vary": "Accept, Accept-Encoding"}
        try:
            if names:
                body = await pages.filtered(names, encoder, use_gzip)
            else:
                body = await pages.page(content_type, encoder, use_gzip)
        except Exception:  # logged where the render failed; the next scrape tries again
            return _text(500, "rendering /metrics failed\n")
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        return Response(body, 200, headers=headers, media_type=content_type)

    async def index(request: Request) -> Response:
        return Response(index_page, 200, headers=_NO_STORE, media_type="text/html; charset=utf-8")

    own = [Route(path, _read_only(handler), methods=_ALL_METHODS)
           for path, handler in (("/", index), (telemetry_path, metrics))]
    app = Starlette(routes=[*own, *_probe_routes(health, ready), *routes], exception_handlers=_ERRORS)
    return _DebugAccessLog(app)


def make_probe_app(health: Check, ready: Check) -> ASGIApp:
    """/healthz and /readyz alone, for --probe-listen-address: plain HTTP, no basic auth, nothing else served
    (the probes say only whether the exporter is alive and ready; no metric, no write endpoint)."""
    return Starlette(routes=_probe_routes(health, ready), exception_handlers=_ERRORS)


def _probe_routes(health: Check, ready: Check) -> list[BaseRoute]:
    """/healthz and /readyz, the same on the main listener and the probe-only one."""

    async def healthz(request: Request) -> Response:
        return _probe(health, "healthz")

    async def readyz(request: Request) -> Response:
        return _probe(ready, "readyz")

    return [Route(path, _read_only(handler), methods=_ALL_METHODS)
            for path, handler in (("/healthz", healthz), ("/readyz", readyz))]


async def _not_found(request: Request, exc: Exception) -> Response:
    return _text(404, "not found\n")


_ERRORS: dict[Any, Any] = {404: _not_found, HTTPException: _http_error}


def _probe(check: Check, name: str) -> Response:
    ok, reason = _run_check(check, name)
    return _text(200, "ok\n") if ok else _text(503, reason + "\n")


# ---------------------------------------------------------------------------------------------------------------
# uvicorn, tuned.


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the CLI owns SIGINT/SIGTERM for the whole process."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29 called this instead
        return None


class HttpServer:
    """Serves the app on an already bound socket, as a task on the caller's event loop.

    `routes` are extra starlette routes (write endpoints); use read_body() and require_bearer() in them.
    Call metrics_changed() (from any thread) whenever the registry's content changes; `prepare` runs on the
    loop before each page is built in a worker thread (SnapshotCollector.prepare). `ssl_context` serves
    HTTPS only; `basic_auth_users` (user -> bcrypt hash) guards every path but the write endpoints;
    `web_config` brings the rest of the web config file (response headers, rate_limit, and its users when
    basic_auth_users is not given).
    """

    def __init__(self, registry: CollectorRegistry, health: Check, ready: Check,
                 routes: Sequence[BaseRoute] = (), limits: Limits | None = None, http: str = "httptools",
                 ssl_context: ssl.SSLContext | None = None,
                 basic_auth_users: Mapping[str, bytes] | None = None,
                 prepare: Callable[[], None] | None = None, web_config: WebConfig | None = None,
                 telemetry_path: str = "/metrics") -> None:
        limits = limits or Limits()
        web = web_config or WebConfig()
        self.pages = MetricsPages(registry, prepare)
        self.auth = BasicAuth(make_app(self.pages, health, ready, routes, telemetry_path),
                              web.users if basic_auth_users is None else basic_auth_users)
        self.rate_limit = RateLimit(self.auth, web.rate_limit)  # before basic auth, as in exporter-toolkit
        self._probe_app = make_probe_app(health, ready)
        self._limits = limits
        self._probe_server: _Server | None = None
        # Requests in flight are capped here, not by uvicorn, which counts every open socket (idle ones too).
        self.slots = RequestSlots(self.rate_limit, limits.max_connections, limits.reserve)
        self.headers = ResponseHeaders(self.slots, web.headers)
        self.app: ASGIApp = self.headers
        self._ssl = None if ssl_context is None else ReloadableTls(ssl_context)
        # Only the httptools protocol gets the connection accounting; "h11" is for comparison benchmarks.
        protocol: type[asyncio.Protocol] | str = protocol_class(limits) if http == "httptools" else http
        config = uvicorn.Config(
            self.app, http=protocol, ws="none", lifespan="off", log_config=None, access_log=False,
            server_header=False, timeout_keep_alive=limits.keep_alive,
            backlog=limits.backlog, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        config.load()
        config.ssl = self._ssl  # uvicorn takes TLS from here; each connection gets the latest context
        self._server = _Server(config)

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    def reload_web_config(self, web: WebConfig) -> None:
        """Apply a re-read web config: users, headers and rate limit at once; TLS for new connections.

        Turning TLS on or off needs a restart (the listener is already up); raises WebConfigError then.
        """
        if (web.tls is not None) != self.tls:
            raise WebConfigError("turning TLS on or off needs a restart; keeping the web config in force")
        context = build_ssl_context(web)  # a whole new context: files, CAs and every setting
        if context is not None and self._ssl is not None:
            self._ssl.use(context)
        self.auth.set_users(web.users)
        self.rate_limit.configure(web.rate_limit)
        self.headers.configure(web.headers)

    def metrics_changed(self) -> None:
        self.pages.changed()

    async def serve(self, listen: socket.socket | Sequence[socket.socket], probe: socket.socket | None = None) -> None:
        """Serve every socket until stop(), and the probe-only app on `probe` (plain HTTP, its own small
        server so that TLS, basic auth and the request cap of the main one never stand in a probe's way).
        Closes the sockets on the way out."""
        sockets = [listen] if isinstance(listen, socket.socket) else list(listen)
        _quiet_uvicorn()
        try:
            if probe is None:
                await self._server.serve(sockets=sockets)
                return
            probe_server = self._probe_server = _Server(self._probe_config())
            probe_server.should_exit = self._server.should_exit  # stop() may have come first

            async def main_then_probe() -> None:
                try:
                    await self._server.serve(sockets=sockets)
                finally:
                    probe_server.should_exit = True  # the probes say nothing once the exporter stops serving

            await asyncio.gather(main_then_probe(), probe_server.serve(sockets=[probe]))
        finally:
            for sock in [*sockets, *([probe] if probe else [])]:
                sock.close()
            self.auth.close()

    def _probe_config(self) -> uvicorn.Config:
        config = uvicorn.Config(
            self._probe_app, http="httptools", ws="none", lifespan="off", log_config=None, access_log=False,
            server_header=False, timeout_keep_alive=self._limits.keep_alive, backlog=64,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN, limit_concurrency=64,
        )
        config.load()
        return config

    def stop(self) -> None:
        """Ask serve() to return (within ~0.1 s, plus up to GRACEFUL_SHUTDOWN for responses in flight)."""
        self._server.should_exit = True
        if self._probe_server is not None:
            self._probe_server.should_exit = True

    @property
    def started(self) -> bool:
        return bool(self._server.started)


class _OncePerMinute(logging.Filter):
    """uvicorn's warnings (a malformed request, connections over the limit) at most once a minute each: worth
    knowing about, but a port scanner or an overload must not flood the log."""

    def __init__(self) -> None:
        super().__init__()
        self._limiter = RateLimiter(60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self._limiter.allow(str(record.msg), time.monotonic())


def _quiet_uvicorn() -> None:
    # uvicorn's startup and shutdown banners are INFO noise for an exporter: they show only at DEBUG.
    debug = logger.isEnabledFor(logging.DEBUG)
    logging.getLogger("uvicorn").setLevel(logging.DEBUG if debug else logging.WARNING)
    errors = logging.getLogger("uvicorn.error")
    if not debug and not any(isinstance(f, _OncePerMinute) for f in errors.filters):
        errors.addFilter(_OncePerMinute())
