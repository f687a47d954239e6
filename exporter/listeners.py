"""The listening sockets: every --web.listen-address bound, or the ones systemd passes
(--web.systemd-socket), and the plain-HTTP probe socket (--probe-listen-address).

Binding happens before anything else starts, so a taken port is a configuration error (exit 2) and not a
failure after the state file was opened.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.addresses import parse_listen
from exporter.server import PortInUseError, bind_socket

# sd_listen_fds(3): passed sockets start at file descriptor 3.
SD_LISTEN_FDS_START = 3


class ListenerError(Exception):
    """A one-line reason the sockets cannot be had; the caller exits 2 with it."""


@dataclass
class Listeners:
    """The sockets to serve: the main ones (all endpoints) and an optional probe-only one."""

    main: list[socket.socket] = field(default_factory=list)
    probe: socket.socket | None = None

    def close(self) -> None:
        for sock in [*self.main, *([self.probe] if self.probe else [])]:
            sock.close()


def open_listeners(addresses: Sequence[str], systemd: bool, probe_address: str | None,
                   env: Mapping[str, str], first_fd: int = SD_LISTEN_FDS_START) -> Listeners:
    """Bind (or take from systemd) every socket, or close what was opened and raise ListenerError."""
    listeners = Listeners()
    try:
        listeners.main = systemd_sockets(env, first_fd) if systemd else [_bind(a) for a in addresses]
        if probe_address is not None:
            listeners.probe = _bind(probe_address)
    except ListenerError:
        listeners.close()
        raise
    except PortInUseError as exc:
        listeners.close()
        raise ListenerError(str(exc)) from None
    except OSError as exc:
        listeners.close()
        raise ListenerError(exc.strerror or str(exc)) from None
    return listeners


def _bind(address: str) -> socket.socket:
    host, port = parse_listen(address)  # checked at load; raises nothing here
    return bind_socket(host, port)


def systemd_sockets(env: Mapping[str, str], first_fd: int = SD_LISTEN_FDS_START) -> list[socket.socket]:
    """The listening TCP sockets systemd passed to this process (LISTEN_PID is ours, LISTEN_FDS of them)."""
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not pid or not count:
        raise ListenerError("--web.systemd-socket: no sockets passed (LISTEN_PID and LISTEN_FDS are not set); "
                            "start the exporter from a systemd .socket unit, or drop the flag")
    if not pid.isdigit() or int(pid) != os.getpid():
        raise ListenerError(f"--web.systemd-socket: LISTEN_PID {pid[:20]!r} is not this process; the sockets "
                            "were meant for another one")
    if not count.isdigit() or not 1 <= int(count) <= 64:
        raise ListenerError(f"--web.systemd-socket: LISTEN_FDS {count[:20]!r} is not a number of sockets (1..64)")
    sockets = []
    for fd in range(first_fd, first_fd + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenerError(f"--web.systemd-socket: file descriptor {fd} is not a socket "
                                f"({exc.strerror})") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()  # not ours to close
            raise ListenerError(f"--web.systemd-socket: file descriptor {fd} is not a listening TCP socket")
        os.set_inheritable(fd, False)
        sockets.append(sock)
    return sockets
