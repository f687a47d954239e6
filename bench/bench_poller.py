"""Print how fast AssistantsSource lists runs, by concurrency.

    python bench/bench_poller.py [--threads 50] [--runs 500] [--latency-ms 2] [--loopback]

Serves N threads x M runs (pages of 100, newest first) over httpx.MockTransport with a simulated
per-request latency, and with --loopback also over a real stdlib HTTP server on 127.0.0.1.
The client-side rate limit is lifted so the figures show the poller, not the token bucket.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from exporter.sources.assistants import ApiSettings, AssistantsSource

T0 = 1_700_000_000
PAGE = 100


def build_pages(threads: int, runs: int) -> dict[tuple[str, str | None], bytes]:
    """(thread_id, after) -> page body, precomputed so serving costs next to nothing."""
    pages: dict[tuple[str, str | None], bytes] = {}
    for t in range(threads):
        tid = f"thread_{t:04d}"
        items = [
            {
                "id": f"run_{t:04d}_{i:06d}",
                "object": "thread.run",
                "thread_id": tid,
                "assistant_id": "asst_bench",
                "status": "completed",
                "created_at": T0 + i,
                "started_at": T0 + i + 1,
                "completed_at": T0 + i + 5,
                "model": "gpt-4o",
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            }
            for i in reversed(range(runs))
        ]
        after: str | None = None
        for start in range(0, max(runs, 1), PAGE):
            chunk = items[start : start + PAGE]
            has_more = start + PAGE < runs
            body = {
                "object": "list",
                "data": chunk,
                "first_id": chunk[0]["id"] if chunk else None,
                "last_id": chunk[-1]["id"] if chunk else None,
                "has_more": has_more,
            }
            pages[(tid, after)] = json.dumps(body).encode()
            after = str(chunk[-1]["id"]) if chunk else None
    return pages


def lookup(pages: dict[tuple[str, str | None], bytes], path: str, after: str | None) -> bytes | None:
    parts = path.rstrip("/").split("/")
    return pages.get((parts[-2], after)) if len(parts) >= 3 else None


def mock_transport(pages: dict[tuple[str, str | None], bytes], latency: float) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        if latency > 0:
            await asyncio.sleep(latency)  # stands in for network + server time
        body = lookup(pages, request.url.path, request.url.params.get("after"))
        if body is None:
            return httpx.Response(404, json={"error": {"message": "No thread found"}})
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


def start_loopback(pages: dict[tuple[str, str | None], bytes], latency: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API
        disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed ACK

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            after = parse_qs(url.query).get("after", [None])[0]
            if latency > 0:
                time.sleep(latency)  # server-side latency, in the server's own thread
            body = lookup(pages, url.path, after)
            status = 200 if body is not None else 404
            payload = body if body is not None else b'{"error": {"message": "No thread found"}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the figures readable

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Figures:
    seconds: float
    runs: int
    requests: int
    errors: int


async def poll_all(
    base_url: str, thread_ids: list[str], concurrency: int, transport: httpx.AsyncBaseTransport | None
) -> Figures:
    counter = {"requests": 0}

    def count(endpoint: str, code: str) -> None:
        counter["requests"] += 1

    settings = ApiSettings(
        base_url=base_url, api_key="sk-bench", max_concurrency=concurrency, max_requests_per_second=1e9
    )
    source = AssistantsSource(settings, on_request=count, transport=transport)
    try:
        start = time.perf_counter()
        results = await asyncio.gather(*(source.poll(t, lambda runs: False) for t in thread_ids))
        elapsed = time.perf_counter() - start
    finally:
        await source.aclose()
    return Figures(
        seconds=elapsed,
        runs=sum(len(r.runs) for r in results),
        requests=counter["requests"],
        errors=sum(r.outcome != "ok" for r in results),
    )


def report(label: str, concurrency: int, f: Figures) -> None:
    print(
        f"{label:<10} {concurrency:>5} {f.seconds * 1000:>9.1f} {f.runs / f.seconds:>10.0f} "
        f"{f.requests / f.seconds:>10.1f} {f.requests:>8} {f.errors:>6}"
    )


def run_mode(
    label: str, base_url: str, make_transport: Callable[[], httpx.AsyncBaseTransport | None], args: argparse.Namespace
) -> None:
    thread_ids = [f"thread_{t:04d}" for t in range(args.threads)]
    for concurrency in args.concurrency:
        figures = asyncio.run(poll_all(base_url, thread_ids, concurrency, make_transport()))
        report(label, concurrency, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--runs", type=int, default=500, help="runs per thread")
    parser.add_argument("--latency-ms", type=float, default=2.0, help="simulated latency per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--loopback", action="store_true", help="also poll a real HTTP server on 127.0.0.1")
    args = parser.parse_args()

    pages = build_pages(args.threads, args.runs)
    latency = args.latency_ms / 1000.0
    print(f"{args.threads} threads x {args.runs} runs, {len(pages)} pages, latency {args.latency_ms} ms/request")
    print(
        f"{'transport':<10} {'conc':>5} {'wall ms':>9} {'runs/s':>10} {'requests/s':>10} {'requests':>8} {'errors':>6}"
    )
    run_mode("mock", "http://bench.test/v1", lambda: mock_transport(pages, latency), args)
    if args.loopback:
        server = start_loopback(pages, latency)
        try:
            host, port = server.server_address[0], server.server_address[1]
            run_mode("loopback", f"http://{host!s}:{port}/v1", lambda: None, args)
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
