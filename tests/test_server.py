"""HttpServer on loopback: routes, pre-rendered pages, gzip, health callables, connection limits, write-route
helpers, port conflicts and clean shutdown."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import prometheus_client
import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from exporter.connections import RequestSlots
from exporter.metrics import SnapshotCollector
from exporter.server import HttpServer, Limits, PortInUseError, bind_socket, read_body, require_bearer
from tests.helpers import free_port, wait_until

HOST = "127.0.0.1"


class Flags:
    """Mutable health/readiness answers the server reads on each request."""

    def __init__(self) -> None:
        self.healthy: tuple[bool, str] = (True, "ok")
        self.ready: tuple[bool, str] = (False, "no poll has completed yet")

    def health(self) -> tuple[bool, str]:
        return self.healthy

    def readiness(self) -> tuple[bool, str]:
        return self.ready


@dataclass
class Running:
    server: HttpServer
    port: int
    loop: asyncio.AbstractEventLoop


@contextmanager
def running(registry: CollectorRegistry, flags: Flags, host: str = HOST, port: int = 0,
            routes: Sequence[BaseRoute] = (), limits: Limits | None = None) -> Iterator[Running]:
    """The server on its own event loop in a thread, as the CLI runs it beside the daemon."""
    sock = bind_socket(host, port)
    srv = HttpServer(registry, flags.health, flags.readiness, routes=routes, limits=limits)
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(srv.serve(sock))
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="test-http", daemon=True)
    thread.start()
    wait_until(lambda: srv.started, what="server started")
    try:
        yield Running(srv, sock.getsockname()[1], loop)
    finally:
        srv.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "server did not stop"


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    gauge = prometheus_client.Gauge("assistants_exporter_api_up", "1 if the last poll reached the API.",
                                    registry=reg)
    gauge.set(1)
    return reg


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(registry: CollectorRegistry, flags: Flags) -> Iterator[Running]:
    with running(registry, flags) as srv:
        yield srv


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
            host: str = HOST) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the connection (recv returns EOF or the socket is reset)."""
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# --- the read-only endpoints -----------------------------------------------------------------------------------


def test_metrics(server: Running) -> None:
    status, headers, body = request(server.port, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "content-encoding" not in headers
    assert b"assistants_exporter_api_up 1.0" in body


def test_metrics_gzip_only_when_accepted(server: Running) -> None:
    status, headers, body = request(server.port, "GET", "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip"
    assert b"assistants_exporter_api_up 1.0" in gzip.decompress(body)
    _, headers, body = request(server.port, "GET", "/metrics", {"Accept-Encoding": "identity"})
    assert "content-encoding" not in headers and body.startswith(b"# HELP")


def test_metrics_openmetrics(server: Running) -> None:
    status, headers, body = request(server.port, "GET", "/metrics",
                                    {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_metrics_head(server: Running) -> None:
    status, headers, body = request(server.port, "HEAD", "/metrics")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 0


def test_healthz_follows_callable(server: Running, flags: Flags) -> None:
    assert request(server.port, "GET", "/healthz")[::2] == (200, b"ok\n")
    flags.healthy = (False, "poll loop stalled for 300s\nsecond line")
    status, headers, body = request(server.port, "GET", "/healthz")
    assert status == 503
    assert body == b"poll loop stalled for 300s second line\n"
    assert headers["content-type"].startswith("text/plain")


def test_readyz_follows_callable(server: Running, flags: Flags) -> None:
    assert request(server.port, "GET", "/readyz")[::2] == (503, b"no poll has completed yet\n")
    flags.ready = (True, "ready")
    assert request(server.port, "GET", "/readyz")[::2] == (200, b"ok\n")


def test_raising_check_is_503(registry: CollectorRegistry) -> None:
    class Broken(Flags):
        def health(self) -> tuple[bool, str]:
            raise RuntimeError("boom")

    with running(registry, Broken()) as srv:
        status, _, body = request(srv.port, "GET", "/healthz")
        assert status == 503 and b"RuntimeError" in body


def test_index_links(server: Running) -> None:
    status, headers, body = request(server.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for path in (b"/metrics", b"/healthz", b"/readyz"):
        assert b'href="' + path + b'"' in body


def test_not_found(server: Running) -> None:
    assert request(server.port, "GET", "/nope")[::2] == (404, b"not found\n")
    assert request(server.port, "GET", "/metrics/extra")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_method_not_allowed(server: Running, method: str) -> None:
    status, headers, _ = request(server.port, method, "/metrics")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_no_access_log_on_stderr(server: Running, capfd: pytest.CaptureFixture[str]) -> None:
    request(server.port, "GET", "/metrics")
    request(server.port, "GET", "/nope")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_request_lines_are_logged_at_debug(server: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="exporter.server"):
        request(server.port, "GET", "/nope")
        # The line is written once the response has gone out, so the client may see the answer first.
        wait_until(lambda: any("GET /nope 404" in r.getMessage() for r in caplog.records), what="the DEBUG line")


# --- pre-rendered pages and filtering --------------------------------------------------------------------------


class CountingCollector(SnapshotCollector):
    """A SnapshotCollector that counts how often the page is actually rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.collects = 0

    def collect(self) -> Iterator[Metric]:
        self.collects += 1
        return super().collect()


def _families(value: float) -> list[Metric]:
    runs = GaugeMetricFamily("assistants_runs", "runs", labels=["status"])
    runs.add_metric(["queued"], value)
    up = GaugeMetricFamily("assistants_exporter_api_up", "up")
    up.add_metric([], 1)
    finished = CounterMetricFamily("assistants_runs_finished", "finished", labels=["status"])
    finished.add_metric(["failed"], 2)
    return [runs, up, finished]


@pytest.fixture
def collector() -> CountingCollector:
    coll = CountingCollector()
    coll.update(_families(1))
    return coll


@pytest.fixture
def snapshot_server(collector: CountingCollector, flags: Flags) -> Iterator[Running]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    with running(registry, flags) as srv:
        collector.add_listener(srv.server.metrics_changed)
        yield srv


def test_scrapes_serve_the_rendered_page_without_rendering(snapshot_server: Running,
                                                           collector: CountingCollector) -> None:
    request(snapshot_server.port, "GET", "/metrics")
    rendered = collector.collects
    for _ in range(20):
        body = request(snapshot_server.port, "GET", "/metrics", {"Accept-Encoding": "gzip"})[2]
        assert b'assistants_runs{status="queued"} 1.0' in gzip.decompress(body)
    assert collector.collects == rendered


def test_an_update_is_rendered_once_and_served(snapshot_server: Running, collector: CountingCollector) -> None:
    request(snapshot_server.port, "GET", "/metrics")
    before = collector.collects
    collector.update(_families(7))
    wait_until(lambda: b'status="queued"} 7.0' in request(snapshot_server.port, "GET", "/metrics")[2],
               what="the new value on /metrics")
    assert collector.collects == before + 1


def test_bursts_of_updates_coalesce(snapshot_server: Running, collector: CountingCollector) -> None:
    request(snapshot_server.port, "GET", "/metrics")
    before = collector.collects
    for value in range(100):
        collector.update(_families(value))
    wait_until(lambda: b'status="queued"} 99.0' in request(snapshot_server.port, "GET", "/metrics")[2],
               what="the last value on /metrics")
    assert collector.collects - before < 100


def test_openmetrics_follows_updates(snapshot_server: Running, collector: CountingCollector) -> None:
    om = {"Accept": "application/openmetrics-text; version=1.0.0"}
    assert b'status="queued"} 1.0' in request(snapshot_server.port, "GET", "/metrics", om)[2]
    collector.update(_families(3))
    wait_until(lambda: b'status="queued"} 3.0' in request(snapshot_server.port, "GET", "/metrics", om)[2],
               what="the new value in OpenMetrics")
    assert request(snapshot_server.port, "GET", "/metrics", om)[2].rstrip().endswith(b"# EOF")


def test_name_filter_returns_the_named_family(snapshot_server: Running) -> None:
    # Regression: describe() returned nothing, so the registry knew no names and every filter answered empty.
    status, _, body = request(snapshot_server.port, "GET", "/metrics?name[]=assistants_runs")
    assert status == 200
    assert b'assistants_runs{status="queued"} 1.0' in body
    assert b"assistants_exporter_api_up" not in body


def test_name_filter_by_sample_names_of_a_counter(snapshot_server: Running) -> None:
    query = "name[]=assistants_runs_finished_total&name[]=assistants_exporter_api_up"
    status, _, body = request(snapshot_server.port, "GET", f"/metrics?{query}", {"Accept-Encoding": "gzip"})
    text = gzip.decompress(body)
    assert status == 200
    assert b'assistants_runs_finished_total{status="failed"} 2.0' in text
    assert b"assistants_exporter_api_up 1.0" in text
    assert b"assistants_runs{" not in text


def test_name_filter_unknown_name_is_empty(snapshot_server: Running) -> None:
    status, _, body = request(snapshot_server.port, "GET", "/metrics?name[]=nothing_here")
    assert status == 200 and body == b""


# --- connections --------------------------------------------------------------------------------------------


def test_port_is_the_bound_port() -> None:
    sock = bind_socket(HOST, 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            bind_socket(HOST, port)
        assert str(info.value) == f"cannot listen on {HOST}:{port}: address already in use"


def test_other_bind_error_is_a_clear_oserror() -> None:
    # 192.0.2.1 (TEST-NET-1) is never an address of this machine.
    with pytest.raises(OSError, match=r"^\[Errno \d+\] cannot listen on 192\.0\.2\.1:0: cannot assign") as info:
        bind_socket("192.0.2.1", 0)
    assert not isinstance(info.value, PortInUseError)


def test_stop_frees_the_port(registry: CollectorRegistry, flags: Flags) -> None:
    port = free_port()
    with running(registry, flags, port=port):
        assert request(port, "GET", "/metrics")[0] == 200
    with running(registry, flags, port=port) as second:
        assert second.port == port
        assert request(port, "GET", "/healthz")[0] == 200


def test_ipv6_loopback(registry: CollectorRegistry, flags: Flags) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with running(registry, flags, host="::1") as srv:
        assert request(srv.port, "GET", "/healthz", host="::1")[::2] == (200, b"ok\n")


def test_a_silent_client_does_not_block_others(server: Running) -> None:
    with socket.create_connection((HOST, server.port), timeout=10):
        assert request(server.port, "GET", "/metrics")[0] == 200


@pytest.mark.parametrize("partial", [b"", b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"GE"])
def test_a_partial_request_is_disconnected_at_the_header_deadline(registry: CollectorRegistry, flags: Flags,
                                                                  partial: bytes) -> None:
    with running(registry, flags, limits=Limits(header_timeout=0.5)) as srv, \
            socket.create_connection((HOST, srv.port), timeout=0.1) as sock:
        start = time.monotonic()
        sock.sendall(partial)
        wait_until(lambda: closed_by_peer(sock), timeout=5, interval=0.01, what="server closing the connection")
        assert time.monotonic() - start >= 0.4  # not before the deadline


def test_a_stalled_second_request_on_a_kept_alive_connection_is_disconnected(registry: CollectorRegistry,
                                                                              flags: Flags) -> None:
    with running(registry, flags, limits=Limits(header_timeout=0.5, keep_alive=60)) as srv:
        conn = http.client.HTTPConnection(HOST, srv.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
        sock = conn.sock
        assert sock is not None
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        sock.settimeout(0.1)
        wait_until(lambda: closed_by_peer(sock), timeout=5, interval=0.01, what="server closing the connection")
        conn.close()


def test_requests_in_flight_over_the_limit_get_503_and_probes_keep_a_reserve(
        registry: CollectorRegistry, flags: Flags, caplog: pytest.LogCaptureFixture) -> None:
    """Idle sockets count for nothing (regression, issue 16: 256 of them denied every request); requests in
    flight are capped, and writes leave the last slots to /metrics and the probes."""
    release = threading.Event()

    async def slow(request: Request) -> Response:
        await asyncio.to_thread(release.wait, 10)
        return PlainTextResponse("done\n")

    limits = Limits(max_connections=3, reserve=1, header_timeout=60)
    with running(registry, flags, routes=[Route("/slow", slow, methods=["POST"])], limits=limits) as srv:
        held = [socket.create_connection((HOST, srv.port), timeout=10) for _ in range(20)]  # idle: no slot
        writers = [threading.Thread(target=request, args=(srv.port, "POST", "/slow")) for _ in range(2)]
        try:
            for writer in writers:
                writer.start()
            slots = srv.server.slots
            assert isinstance(slots, RequestSlots)
            wait_until(lambda: slots.active == 2, what="two writes in flight")
            assert [request(srv.port, "POST", "/slow")[0] for _ in range(3)] == [503] * 3  # writes: full
            assert request(srv.port, "GET", "/healthz")[0] == 200  # the reserve
            assert request(srv.port, "GET", "/metrics")[0] == 200
            assert sum("concurrency limit" in r.getMessage() for r in caplog.records) <= 1  # once a minute
        finally:
            release.set()
            for writer in writers:
                writer.join(10)
            for sock in held:
                sock.close()
        assert request(srv.port, "POST", "/slow")[0] == 200


def test_uvicorn_leaves_the_signal_handlers_alone(registry: CollectorRegistry, flags: Flags) -> None:
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not expected to be called")

    previous = signal.signal(signal.SIGTERM, mine)

    async def main() -> object:
        srv = HttpServer(registry, flags.health, flags.readiness)
        task = asyncio.create_task(srv.serve(bind_socket(HOST, 0)))
        while not srv.started:
            assert not task.done()
            await asyncio.sleep(0.01)  # polling the start flag of a task on this loop
        during = signal.getsignal(signal.SIGTERM)
        srv.stop()
        await asyncio.wait_for(task, 10)
        return during

    try:
        assert asyncio.run(main()) is mine  # this test runs on the main thread, where uvicorn would install its own
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- helpers for write endpoints ------------------------------------------------------------------------------

TOKEN = "push-token-0123456789"
CAP = 1000


async def _echo(request: Request) -> Response:
    require_bearer(request, [TOKEN, "second-token-0123456789"])
    body = await read_body(request, CAP, timeout=0.5)
    return PlainTextResponse(f"{len(body)} bytes\n", 202)


@pytest.fixture
def write_server(registry: CollectorRegistry, flags: Flags) -> Iterator[Running]:
    with running(registry, flags, routes=[Route("/api/v1/echo", _echo, methods=["POST"])]) as srv:
        yield srv


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_write_route_accepts_each_configured_token(write_server: Running) -> None:
    assert request(write_server.port, "POST", "/api/v1/echo", AUTH, b"x" * CAP)[::2] == (202, b"1000 bytes\n")
    second = {"Authorization": "Bearer second-token-0123456789"}
    assert request(write_server.port, "POST", "/api/v1/echo", second, b"x")[::2] == (202, b"1 bytes\n")


@pytest.mark.parametrize("auth", [None, "Bearer presented-guess", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
def test_write_route_refuses_other_credentials(write_server: Running, auth: str | None) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    status, got, body = request(write_server.port, "POST", "/api/v1/echo", headers, b"{}")
    assert status == 401
    assert got["www-authenticate"] == "Bearer"
    assert body == b"missing or wrong bearer token\n"  # names neither the token nor what was presented


def test_empty_configured_token_refuses_everything(registry: CollectorRegistry, flags: Flags) -> None:
    async def open_door(request: Request) -> Response:
        require_bearer(request, [])
        return PlainTextResponse("in\n")

    with running(registry, flags, routes=[Route("/w", open_door, methods=["POST"])]) as srv:
        assert request(srv.port, "POST", "/w", {"Authorization": "Bearer "}, b"")[0] == 401


def test_write_route_method_not_allowed(write_server: Running) -> None:
    assert request(write_server.port, "GET", "/api/v1/echo", AUTH)[0] == 405


def test_declared_oversized_body_is_413(write_server: Running) -> None:
    status, headers, body = request(write_server.port, "POST", "/api/v1/echo", AUTH, b"x" * (CAP + 1))
    assert status == 413 and headers["connection"] == "close"
    assert body == f"request body larger than {CAP} bytes\n".encode()


def test_streamed_oversized_body_is_refused_before_it_ends(write_server: Running) -> None:
    # Chunked, no Content-Length: the 413 must come while the client has not finished sending.
    with socket.create_connection((HOST, write_server.port), timeout=10) as sock:
        sock.sendall("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        chunk = b"y" * (CAP + 1)
        sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")  # no final 0-chunk: the body never ends
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)
            assert data, "connection closed without an answer"
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_slow_body_is_408(write_server: Running) -> None:
    with socket.create_connection((HOST, write_server.port), timeout=10) as sock:
        sock.sendall("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                     f"Authorization: Bearer {TOKEN}\r\n\r\nabc".encode())
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_connections_have_nagle_off(server: Running) -> None:
    """Regression: the listening socket had proto 0, so asyncio left Nagle's algorithm on for its connections,
    and each response on a kept-alive connection (headers, then body) waited ~40 ms for a delayed ACK."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"  # the connection stays open (keep-alive)
        connections = server.server._server.server_state.connections
        assert connections
        options = [c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                   for c in list(connections)]
        assert all(options), options
    finally:
        conn.close()
