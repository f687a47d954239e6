"""Print how fast the real exporter answers signed webhook deliveries on POST /webhooks/openai.

    nice -n 19 python bench/bench_webhooks.py [--events 2000] [--concurrency 16]

Goal (issue 9): a delivery is answered 2xx within milliseconds, after its event is committed to the state
file (the answer waits for the group commit). Prints p50/p99/max latency, one client at a time and with
`--concurrency` clients, beside a GET /healthz (the floor of the HTTP stack), and how many events were
counted. The clients are raw keep-alive sockets with TCP_NODELAY, each request sent in one write: a client
library that writes headers and body apart can add a 40 ms delayed-ACK stall of its own. Asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.sources.webhooks import parse_secret, sign
from tests.exporter_process import ExporterProcess, total

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789a").decode()
GOAL_P99_MS = 50.0


class _Conn:
    """One keep-alive HTTP/1.1 connection: whole requests in one write, answers read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
        head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "host": "127.0.0.1",
                                                       "content-length": str(len(body))}.items())
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        header, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = header.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length"))
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf[length:]
        return int(lines[0].split()[1])


def _delivery(i: int) -> tuple[bytes, dict[str, str]]:
    now = int(time.time())
    body = json.dumps({"id": f"evt_{i}", "object": "event", "type": "response.completed", "created_at": now,
                       "data": {"id": f"resp_{i}"}}).encode()
    headers = {"content-type": "application/json", "webhook-id": f"evt_{i}", "webhook-timestamp": str(now),
               "webhook-signature": "v1," + sign(parse_secret(SECRET), f"evt_{i}", now, body)}
    return body, headers


def _run(port: int, ids: list[int], concurrency: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        conn = _Conn(port)
        while True:
            with lock:
                if not ids:
                    return
                i = ids.pop()
            body, headers = _delivery(i)
            t = time.perf_counter()
            status = conn.request("POST", "/webhooks/openai", headers, body)
            elapsed = (time.perf_counter() - t) * 1000
            assert status == 200, status
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def _line(name: str, ms: list[float], seconds: float) -> str:
    ordered = sorted(ms)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return (f"{name:<14} {len(ms):>6} requests  {len(ms) / seconds:>7.0f}/s  p50 {statistics.median(ms):6.2f} ms  "
            f"p99 {p99:6.2f} ms  max {ordered[-1]:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        secrets = Path(tmp) / "secrets"
        secrets.write_text(SECRET + "\n")
        exporter = ExporterProcess(["--source", "responses", "--webhook-secret-file", str(secrets),
                                    "--state-file", str(Path(tmp) / "state.db"), "--log-level", "warning"],
                                   {"OPENAI_API_KEY": ""}).start()
        try:
            exporter.wait_ready()
            conn, floor = _Conn(exporter.port), []
            t0 = time.perf_counter()
            for _ in range(200):
                t = time.perf_counter()
                conn.request("GET", "/healthz", {})
                floor.append((time.perf_counter() - t) * 1000)
            print(_line("GET /healthz", floor, time.perf_counter() - t0) + "  (the floor: no work, no commit)")
            half = args.events // 2
            for name, ids, clients in (("1 client", list(range(half)), 1),
                                       (f"{args.concurrency} clients", list(range(half, args.events)),
                                        args.concurrency)):
                t = time.perf_counter()
                ms = _run(exporter.port, ids, clients)
                p99 = sorted(ms)[max(0, int(len(ms) * 0.99) - 1)]
                print(_line(name, ms, time.perf_counter() - t)
                      + f"  (goal p99 < {GOAL_P99_MS:g} ms: {'met' if p99 < GOAL_P99_MS else 'NOT met'})")
            counted = total(exporter.scrape(), "assistants_runs_finished_total")
            print(f"counted        {counted:>6.0f} of {args.events} events (goal: all)")
        finally:
            exporter.stop()


if __name__ == "__main__":
    main()
