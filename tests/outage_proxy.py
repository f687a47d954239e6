"""A TCP proxy on loopback that can make the API behind it hang or refuse connections, for outage tests."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from typing import Literal

from tests.helpers import free_port

Mode = Literal["pass", "hang", "refuse"]
_REQUEST_LINE = re.compile(rb"GET [^ ]*/threads/([^/ ?]+)/runs")


class OutageProxy:
    """Forwards 127.0.0.1:port to the upstream port. `hang()`: connections stay open and nothing is forwarded
    (a server that stopped answering); `refuse()`: the port is closed and open connections are cut;
    `restore()`: back to forwarding on the same port. Records (time, thread id) of each runs request
    forwarded."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.mode: Mode = "pass"
        self.forwarded: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OutageProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.05)  # so that a closed listener ends its accept loop
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def hang(self) -> None:
        self.mode = "hang"

    def refuse(self) -> None:
        self.mode = "refuse"
        self._close_all()

    def restore(self) -> None:
        if self.mode == "refuse":
            self.start()
        self.mode = "pass"

    def stop(self) -> None:
        self.mode = "refuse"
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            listener, self._listener = self._listener, None
        for sock in [*conns, *([listener] if listener else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if self.mode != "pass":
                    continue  # swallowed: the other side waits for an answer that never comes
                if requests:
                    for match in _REQUEST_LINE.finditer(data):
                        self.forwarded.append((time.monotonic(), match.group(1).decode()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
