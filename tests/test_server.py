"""MetricsServer on loopback: routes, gzip, health callables, port conflicts and clean shutdown."""

from __future__ import annotations

import errno
import gzip
import http.client
import socket
import threading
from collections.abc import Iterator

import prometheus_client
import pytest

from exporter import server as server_module
from exporter.server import MetricsServer, PortInUseError
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


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    reg = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge("assistants_exporter_api_up", "1 if the last poll reached the API.",
                                    registry=reg)
    gauge.set(1)
    return reg


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(registry: prometheus_client.CollectorRegistry, flags: Flags) -> Iterator[MetricsServer]:
    srv = MetricsServer(registry, HOST, 0, flags.health, flags.readiness)
    srv.start()
    yield srv
    srv.stop()


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_port_is_bound_port(server: MetricsServer) -> None:
    assert server.port > 0


def test_metrics(server: MetricsServer) -> None:
    status, headers, body = request(server.port, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"assistants_exporter_api_up 1.0" in body


def test_metrics_gzip(server: MetricsServer) -> None:
    status, headers, body = request(server.port, "GET", "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip"
    assert b"assistants_exporter_api_up 1.0" in gzip.decompress(body)


def test_metrics_openmetrics(server: MetricsServer) -> None:
    status, headers, body = request(server.port, "GET", "/metrics",
                                    {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_metrics_head(server: MetricsServer) -> None:
    status, _, body = request(server.port, "HEAD", "/metrics")
    assert status == 200 and body == b""


def test_healthz_follows_callable(server: MetricsServer, flags: Flags) -> None:
    assert request(server.port, "GET", "/healthz")[::2] == (200, b"ok\n")
    flags.healthy = (False, "poll loop stalled for 300s\nsecond line")
    status, headers, body = request(server.port, "GET", "/healthz")
    assert status == 503
    assert body == b"poll loop stalled for 300s second line\n"
    assert headers["content-type"].startswith("text/plain")


def test_readyz_follows_callable(server: MetricsServer, flags: Flags) -> None:
    assert request(server.port, "GET", "/readyz")[::2] == (503, b"no poll has completed yet\n")
    flags.ready = (True, "ready")
    assert request(server.port, "GET", "/readyz")[::2] == (200, b"ok\n")


def test_raising_check_is_503(registry: prometheus_client.CollectorRegistry) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    srv = MetricsServer(registry, HOST, 0, broken, broken)
    srv.start()
    try:
        status, _, body = request(srv.port, "GET", "/healthz")
        assert status == 503 and b"RuntimeError" in body
    finally:
        srv.stop()


def test_index_links(server: MetricsServer) -> None:
    status, headers, body = request(server.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for path in (b"/metrics", b"/healthz", b"/readyz"):
        assert b'href="' + path + b'"' in body


def test_not_found(server: MetricsServer) -> None:
    assert request(server.port, "GET", "/nope")[0] == 404
    assert request(server.port, "GET", "/metrics/extra")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_method_not_allowed(server: MetricsServer, method: str) -> None:
    status, headers, _ = request(server.port, method, "/metrics")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_query_string_filter(server: MetricsServer) -> None:
    status, _, body = request(server.port, "GET", "/metrics?name[]=nothing_here")
    assert status == 200 and b"assistants_exporter_api_up" not in body


def test_port_in_use(registry: prometheus_client.CollectorRegistry, flags: Flags) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = MetricsServer(registry, HOST, port, flags.health, flags.readiness)
        with pytest.raises(PortInUseError) as info:
            srv.start()
        assert str(info.value) == f"cannot listen on {HOST}:{port}: address already in use"


def test_other_bind_error_is_a_clear_oserror(registry: prometheus_client.CollectorRegistry,
                                            flags: Flags, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    monkeypatch.setattr(server_module._ThreadingWSGIServer, "server_bind", refuse)
    srv = MetricsServer(registry, HOST, 0, flags.health, flags.readiness)
    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:0: cannot assign requested address") as info:
        srv.start()
    assert not isinstance(info.value, PortInUseError)


def test_stop_frees_the_port(registry: prometheus_client.CollectorRegistry, flags: Flags) -> None:
    port = free_port()
    first = MetricsServer(registry, HOST, port, flags.health, flags.readiness)
    first.start()
    assert request(port, "GET", "/metrics")[0] == 200
    first.stop()
    first.stop()  # idempotent
    second = MetricsServer(registry, HOST, port, flags.health, flags.readiness)
    second.start()
    try:
        assert second.port == port
        assert request(port, "GET", "/healthz")[0] == 200
    finally:
        second.stop()


def test_serves_concurrent_clients(server: MetricsServer) -> None:
    # A client that connects and sends nothing must not block other scrapes (threaded server).
    with socket.create_connection((HOST, server.port), timeout=10):
        assert request(server.port, "GET", "/metrics")[0] == 200


def test_serves_from_a_daemon_thread(server: MetricsServer) -> None:
    names = wait_until(lambda: [t for t in threading.enumerate() if t.name == "metrics-http"],
                       what="server thread")
    assert all(t.daemon for t in names)


def test_no_access_log_on_stderr(server: MetricsServer, capfd: pytest.CaptureFixture[str]) -> None:
    request(server.port, "GET", "/metrics")
    request(server.port, "GET", "/nope")
    assert capfd.readouterr().err == ""
