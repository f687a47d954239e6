"""exporter-toolkit's listener flags: every --web.listen-address served, --web.telemetry-path, sockets passed by
systemd (--web.systemd-socket), and the plain-HTTP probe listener behind TLS and basic auth."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.listeners import ListenerError, open_listeners, systemd_sockets
from tests.helpers import REPO_ROOT, free_port, wait_until
from tests.tls_support import bcrypt_hash, make_pki

# A launcher that does what systemd does for a socket unit: the listening socket on file descriptor 3,
# LISTEN_FDS=1 and LISTEN_PID set to the process that then runs the exporter (execv keeps the pid).
SYSTEMD_LAUNCHER = """
import os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(16)
print(sock.getsockname()[1], flush=True)
os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)  # the socket may itself be fd 3, and Python's sockets are closed on exec
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "exporter", *sys.argv[1:]])
"""


def _exporter(args: list[str], tmp_path: Path, **popen: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    log = (tmp_path / "exporter.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "exporter", "--demo", "--state-file", str(tmp_path / "s.db"),
                             *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, **popen)  # type: ignore[call-overload]


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    return proc.wait(timeout=15)


def _get(url: str, **kwargs: object) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError:
        return None


def _wait_status(url: str, status: int, proc: subprocess.Popen[bytes], **kwargs: object) -> httpx.Response:
    def answered() -> httpx.Response | None:
        assert proc.poll() is None, "exporter exited"
        r = _get(url, **kwargs)
        return r if r is not None and r.status_code == status else None

    got = wait_until(answered, 30, interval=0.1, what=f"{url} to answer {status}")
    assert got is not None
    return got


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_every_listen_address_is_served_with_the_telemetry_path(tmp: Path) -> None:
    first, second = free_port(), free_port()
    proc = _exporter(["--web.listen-address", f"127.0.0.1:{first}", "--listen", f"127.0.0.1:{second}",
                      "--web.telemetry-path", "/prom/metrics"], tmp)
    try:
        for port in (first, second):
            page = _wait_status(f"http://127.0.0.1:{port}/prom/metrics", 200, proc)
            assert "assistants_exporter_build_info" in page.text
            assert _get(f"http://127.0.0.1:{port}/metrics").status_code == 404  # type: ignore[union-attr]
            index = _get(f"http://127.0.0.1:{port}/")
            assert index is not None and 'href="/prom/metrics"' in index.text
    finally:
        assert _stop(proc) == 0


def test_the_exporter_serves_on_the_socket_systemd_passes(tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with (tmp / "exporter.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", SYSTEMD_LAUNCHER, "--demo", "--web.systemd-socket",
                                 "--state-file", str(tmp / "s.db")], env=env, stdout=subprocess.PIPE,
                                stderr=log, cwd=REPO_ROOT, pass_fds=())
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        page = _wait_status(f"http://127.0.0.1:{port}/metrics", 200, proc)  # type: ignore[arg-type]
        assert "assistants_exporter_build_info" in page.text
    finally:
        assert _stop(proc) == 0  # type: ignore[arg-type]
    assert "listening on systemd's sockets" in (tmp / "exporter.log").read_text()


def test_systemd_sockets_are_refused_when_not_passed_to_this_process(tmp: Path) -> None:
    with pytest.raises(ListenerError, match="no sockets passed"):
        systemd_sockets({})
    with pytest.raises(ListenerError, match="is not this process"):
        systemd_sockets({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"})
    with pytest.raises(ListenerError, match="not a number of sockets"):
        systemd_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"})
    read, write = os.pipe()
    try:
        with pytest.raises(ListenerError, match=f"file descriptor {read} is not a"):
            systemd_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}, first_fd=read)
    finally:
        os.close(read)
        os.close(write)


def test_a_passed_socket_that_is_not_listening_is_refused() -> None:
    unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ListenerError, match="is not a listening TCP socket"):
            systemd_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}, first_fd=unbound.fileno())
        assert unbound.fileno() >= 0  # still ours: the check did not close it
    finally:
        unbound.close()


def test_a_taken_address_among_several_closes_the_others_and_says_which() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    free = free_port()
    try:
        with pytest.raises(ListenerError, match=f"127.0.0.1:{taken.getsockname()[1]}: address already in use"):
            open_listeners([f"127.0.0.1:{free}", f"127.0.0.1:{taken.getsockname()[1]}"], False, None, {})
        again = open_listeners([f"127.0.0.1:{free}"], False, None, {})  # the first one was closed again
        again.close()
    finally:
        taken.close()


def test_a_taken_port_exits_2_with_one_line(tmp: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        result = subprocess.run([sys.executable, "-m", "exporter", "--demo", "--state-file", str(tmp / "s.db"),
                                 "--probe-listen-address", f"127.0.0.1:{taken.getsockname()[1]}",
                                 "--web.listen-address", f"127.0.0.1:{free_port()}"],
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                                timeout=60, cwd=REPO_ROOT)
    finally:
        taken.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "address already in use" in result.stderr


def test_probes_answer_on_their_own_listener_behind_client_certificates_and_basic_auth(tmp: Path) -> None:
    pki = make_pki(tmp)
    web = tmp / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca)},
        "basic_auth_users": {"prometheus": bcrypt_hash("right-password")},
    }))
    main, probe = free_port(), free_port()
    proc = _exporter(["--web.listen-address", f"127.0.0.1:{main}", "--probe-listen-address", f"127.0.0.1:{probe}",
                      "--web.config.file", str(web)], tmp)
    try:
        assert _wait_status(f"http://127.0.0.1:{probe}/healthz", 200, proc).text == "ok\n"
        _wait_status(f"http://127.0.0.1:{probe}/readyz", 200, proc)
        for path in ("/metrics", "/", "/api/v1/runs"):
            answer = _get(f"http://127.0.0.1:{probe}{path}")
            assert answer is not None and answer.status_code == 404, path  # probes only
        # The main listener still wants a client certificate, then the password.
        no_cert = ssl.create_default_context(cafile=str(pki.ca))
        assert _get(f"https://127.0.0.1:{main}/healthz", verify=no_cert) is None
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.load_cert_chain(pki.client_cert, pki.client_key)
        assert _get(f"https://127.0.0.1:{main}/healthz", verify=with_cert).status_code == 401  # type: ignore[union-attr]
        ok = _get(f"https://127.0.0.1:{main}/metrics", verify=with_cert, auth=("prometheus", "right-password"))
        assert ok is not None and ok.status_code == 200
    finally:
        assert _stop(proc) == 0
