"""Idle and half-open connections against the real exporter: how fast /metrics and /healthz still answer.

    python bench/bench_idle_conns.py                      # 1,000 hostile sockets, 20 s
    python bench/bench_idle_conns.py --idle 3000 --seconds 30

The exporter runs as in production (`--demo`, its own process). A hostile client opens `--idle` connections,
half of them silent and half with a request line and one header that never end; it keeps half of them open
and closes and reopens the other half as fast as it can, for the whole run. Meanwhile a prober sends
`GET /metrics` and `GET /healthz`, each on a new connection, every 0.1 s, and measures each latency.
Goal (issue 16): every answer in under 1 s. Prints figures beside the goal and the load average; asserts
nothing.
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
GOAL_S = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, float]:
    start = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - start
    except OSError:
        return 0, time.monotonic() - start
    finally:
        conn.close()


class Hostile(threading.Thread):
    def __init__(self, port: int, count: int) -> None:
        super().__init__(name="hostile", daemon=True)
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.reopened = 0
        self.socks = [self._open(i) for i in range(count)]

    def _open(self, i: int) -> socket.socket | None:
        try:
            sock = socket.create_connection((HOST, self.port), timeout=10)
            if i % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            return sock
        except OSError:
            return None

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            old = self.socks[i]
            if old is not None:
                old.close()
            self.socks[i] = self._open(i)
            self.reopened += 1
            i = (i + 2) % self.count

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        for sock in self.socks:
            if sock is not None:
                sock.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.idle + 1024)), hard))
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--demo",
                "--listen",
                f"{HOST}:{port}",
                "--state-file",
                str(Path(tmp) / "s.db"),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while _get(port, "/healthz")[0] != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the exporter did not start")
                time.sleep(0.2)
            hostile = Hostile(port, args.idle)
            hostile.start()
            results: dict[str, list[tuple[int, float]]] = {"/metrics": [], "/healthz": []}
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                for path, answers in results.items():
                    answers.append(_get(port, path))
                time.sleep(0.1)
            reopened = hostile.reopened
            hostile.close()
        finally:
            proc.terminate()
            proc.wait(15)
    load = os.getloadavg()
    print(
        f"{args.idle} hostile connections (half reopened: {reopened / args.seconds:,.0f} reconnects/s) "
        f"for {args.seconds:g} s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'path':<10} {'n':>5} {'ok':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  goal")
    for path, answers in results.items():
        ok = [t for status, t in answers if status == 200]
        slowest = sorted(range(len(answers)), key=lambda i: -answers[i][1])[:3]
        print(f"  {path} slowest: " + ", ".join(f"#{i} {1000 * answers[i][1]:.0f} ms" for i in slowest))
        print(
            f"{path:<10} {len(answers):>5} {len(ok):>5} {1000 * _percentile(ok, 0.5):>8.1f} "
            f"{1000 * _percentile(ok, 0.99):>8.1f} {1000 * max(ok, default=float('nan')):>8.1f}  "
            f"every answer 200 in < {GOAL_S:g} s: {'met' if len(ok) == len(answers) and max(ok) < GOAL_S else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
