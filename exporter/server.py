"""HTTP for /metrics, /healthz and /readyz, served from a daemon thread (never on the asyncio poll loop).

A scrape only reads the registry, whose collector returns an immutable snapshot built by the poll loop,
so serving from another thread needs no locking here.
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client

logger = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]
Environ = dict[str, Any]

_TEXT = "text/plain; charset=utf-8"
_POLL_INTERVAL = 0.5  # serve_forever's select timeout; stop() doesn't wait for it (see _shutdown_promptly)


class PortInUseError(Exception):
    """The listen address is already taken by another process."""


class _QuietHandler(WSGIRequestHandler):
    """No per-request access log on stderr; request lines go to DEBUG instead."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def address_string(self) -> str:
        return str(self.client_address[0])


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # stop() must not wait for a stuck client; request threads are daemons anyway.
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall startup;
        # the name is only used for SERVER_NAME, which nothing here needs.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response are routine for an exporter; keep tracebacks at DEBUG.
        logger.debug("error serving %s", client_address, exc_info=True)


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


def _respond(start_response: StartResponse, status: str, body: str,
             content_type: str = _TEXT, extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    data = body.encode("utf-8")
    headers = [("Content-Type", content_type), ("Content-Length", str(len(data))),
               ("Cache-Control", "no-store"), *extra]
    start_response(status, headers)
    return [data]


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown"


def _run_check(check: Check, name: str) -> tuple[bool, str]:
    try:
        ok, reason = check()
    except Exception as exc:  # a broken check must not take the endpoint down with a 500
        logger.warning("%s check raised %s", name, type(exc).__name__, exc_info=True)
        return False, f"{name} check failed: {type(exc).__name__}"
    return bool(ok), _one_line(reason)


_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>assistants-exporter</title></head>
<body><h1>assistants-exporter</h1>
<ul>
<li><a href="/metrics">/metrics</a></li>
<li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li>
</ul></body></html>
"""


def make_app(registry: prometheus_client.CollectorRegistry, health: Check,
             ready: Check) -> Callable[..., Any]:
    """The WSGI app: routing, method checks and HEAD handling around prometheus_client's metrics app."""
    metrics_app = prometheus_client.make_wsgi_app(registry)
    routes = {"/", "/metrics", "/healthz", "/readyz"}

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if path not in routes:
            return _respond(start_response, "404 Not Found", "not found\n")
        if method not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", "method not allowed\n",
                            extra=[("Allow", "GET, HEAD")])
        body = _dispatch(path, environ, start_response)
        # wsgiref sends whatever the app returns, even for HEAD; drop the body but keep the headers.
        return [] if method == "HEAD" else body

    def _dispatch(path: str, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if path == "/metrics":
            # prometheus_client's app only accepts GET; it negotiates gzip and OpenMetrics itself.
            result: Iterable[bytes] = metrics_app({**environ, "REQUEST_METHOD": "GET"}, start_response)
            return result
        if path in ("/healthz", "/readyz"):
            ok, reason = _run_check(health if path == "/healthz" else ready, path.lstrip("/"))
            if ok:
                return _respond(start_response, "200 OK", "ok\n")
            return _respond(start_response, "503 Service Unavailable", reason + "\n")
        return _respond(start_response, "200 OK", _INDEX, content_type="text/html; charset=utf-8")

    return app


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """Serves the registry and the health endpoints from a daemon thread."""

    def __init__(self, registry: prometheus_client.CollectorRegistry, host: str, port: int,
                 health: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]]) -> None:
        self._app = make_app(registry, health, ready)
        self._host = host
        self._requested_port = port
        self._httpd: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now (so a taken port fails startup) and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("MetricsServer already started")
        where = _display(self._host, self._requested_port)
        server_class = _ThreadingWSGIServerV6 if ":" in self._host else _ThreadingWSGIServer
        try:
            httpd = make_server(self._host, self._requested_port, self._app,
                                server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"cannot listen on {where}: address already in use") from None
            reason = exc.strerror or type(exc).__name__
            raise OSError(exc.errno, f"cannot listen on {where}: {reason.lower()}") from None
        assert isinstance(httpd, _ThreadingWSGIServer)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": _POLL_INTERVAL},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        logger.debug("http server bound to %s", _display(self._host, self.port))

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread. Safe to call twice."""
        httpd, thread = self._httpd, self._thread
        self._httpd, self._thread = None, None
        if httpd is None:
            return
        if thread is not None:
            _shutdown_promptly(httpd)
            thread.join()
        httpd.server_close()


def _shutdown_promptly(httpd: _ThreadingWSGIServer) -> None:
    """httpd.shutdown(), without waiting out serve_forever's select timeout.

    shutdown() only sets a flag that the serve loop checks between select() calls; poking the listening
    socket with a throwaway connection wakes select() at once, so stop() takes milliseconds instead of
    up to _POLL_INTERVAL (which is long so that an idle exporter doesn't wake up needlessly).
    """
    done = threading.Event()

    def shutdown() -> None:
        httpd.shutdown()
        done.set()

    threading.Thread(target=shutdown, name="metrics-http-stop", daemon=True).start()
    host, port = httpd.server_address[:2]
    host = str(host)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    while not done.wait(0.01):
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
        except OSError:
            pass  # the flag is still checked every _POLL_INTERVAL
