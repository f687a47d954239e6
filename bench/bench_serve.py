"""Open-loop load on /metrics: latency percentiles at a fixed request rate, old and new HTTP stacks.

    python bench/bench_serve.py                       # new stack, 200 req/s, ~600 and ~10,000 series
    python bench/bench_serve.py --stack stdlib        # the former ThreadingWSGIServer (from git history)
    python bench/bench_serve.py --http h11 --rate 200 --rate 400 --seconds 20
    python bench/bench_serve.py --realistic           # the real exporter polling 50 threads: bench_serve_realistic.py

The server runs in its own process, as in production: an asyncio loop that publishes every second (the
daemon's work: build_families from a tracker holding as many runs as assistants x 200, then
SnapshotCollector.update) while serving. The load generator schedules requests at a fixed rate, each on its
own connection (Accept-Encoding: gzip, like Prometheus), and measures every latency from the request's
*scheduled* time, so queueing in the server shows instead of slowing the generator down (open loop).
Percentiles are over the answered requests; errors (including 10 s timeouts) are counted apart. `cpu %` is
the server process's CPU time over the measured run (100 = one core), a figure less sensitive to other load
on the machine than the latencies. Prints figures beside the goal; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GOAL_P99_MS = 50.0  # at 200 req/s with 10,000 series
# The stdlib server this stack replaced, loaded from the last commit that had it.
STDLIB_REV = "d70fc6e"
CASES = ((3, "~600"), (50, "~10,000"))  # assistants -> series


# --- server side (child process) -----------------------------------------------------------------------------


def _load_stdlib_server() -> object:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{STDLIB_REV}:exporter/server.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "stdlib_server.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("stdlib_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LoopStalls:
    """How long the loop was held by each build of the families and by each garbage collection (wall time)."""

    def __init__(self) -> None:
        self.builds: list[float] = []
        self.collections: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections[info["generation"]].append(time.perf_counter() - self._started)

    def reset(self) -> None:
        self.builds.clear()
        for values in self.collections.values():
            values.clear()

    def summary(self) -> str:
        def ms(values: list[float]) -> str:
            return f"{len(values)} x, p50 {_pct(values, 0.5):.1f} ms, max {_pct(values, 1.0):.1f} ms"
        return (f"  builds: {ms(self.builds)}; gen-2 collections: {ms(self.collections[2])}; "
                f"gen-1: {ms(self.collections[1])}")


async def _publish_every_second(collector: object, assistants: int, off_loop: bool, stalls: LoopStalls,
                                gc_tuned: bool) -> None:
    from bench_scrape import _tracker

    from exporter import metrics_spec as m
    from exporter.metrics import ExporterState, build_families

    tracker = _tracker(assistants * 200, assistants)
    if gc_tuned:  # as the exporter does once its state is loaded
        from exporter.gctune import tune_after_load

        tune_after_load()
    state = ExporterState(api_up={"threads": 1.0})
    tick = 0
    while True:
        tick += 1
        # As in a busy fleet, a tenth of the assistants see runs end between two publishes.
        for a in range(tick % 10, assistants, 10):
            tracker.aggregates.observe(m.RUN_DURATION.name, ("completed", "threads", f"asst_{a}"), 3.0 + tick % 7)
            tracker.aggregates.observe(m.STATUS_DURATION.name, ("in_progress", "threads", f"asst_{a}"), 2.0)
        started = time.perf_counter()
        if off_loop:
            families = await asyncio.to_thread(build_families, tracker, state, 1_700_000_020 + tick)
        else:  # what Daemon.publish does: build on the loop
            families = build_families(tracker, state, 1_700_000_020 + tick)
        stalls.builds.append(time.perf_counter() - started)
        collector.update(families)  # type: ignore[attr-defined]
        if tick == 1:  # count from the first publish on: not the start's loading, freezing and cold build
            stalls.reset()
        await asyncio.sleep(1)


def serve(stack: str, http: str, port: int, assistants: int, off_loop: bool, gc_tuned: bool) -> None:
    from prometheus_client import disable_created_metrics
    from prometheus_client.registry import CollectorRegistry

    from exporter.metrics import SnapshotCollector

    disable_created_metrics()  # type: ignore[no-untyped-call]
    collector = SnapshotCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def ok() -> tuple[bool, str]:
        return True, "ok"

    stalls = LoopStalls()
    signal.signal(signal.SIGTERM, lambda *_: (print(stalls.summary(), file=sys.stderr, flush=True), os._exit(0)))

    async def main() -> None:
        publisher = asyncio.create_task(_publish_every_second(collector, assistants, off_loop, stalls, gc_tuned))
        publisher.add_done_callback(lambda t: t.cancelled() or t.exception() is None or os._exit(3))  # no silent death
        if stack == "stdlib":
            old = _load_stdlib_server().MetricsServer(registry, "127.0.0.1", port, ok, ok)  # type: ignore[attr-defined]
            old.start()
            print("ready", flush=True)
            await publisher
        else:
            from exporter.server import HttpServer, bind_socket

            sock = bind_socket("127.0.0.1", port)
            server = HttpServer(registry, ok, ok, http=http)
            collector.add_listener(server.metrics_changed)
            print("ready", flush=True)
            await server.serve(sock)

    asyncio.run(main())


# --- load generator (parent process) ---------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float]
    errors: dict[str, int]
    sent: int
    server_cpu: float = 0.0  # seconds of CPU the server process used during the measured run


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one(port: int, scheduled: float, out: list[float], timeout: float) -> str | None:
    """One request; None when answered, else what went wrong."""
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    return head.split(b"\r\n", 1)[0].decode(errors="replace")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                body = await (reader.readexactly(length) if length is not None else reader.read())
                if not body:
                    return "empty body"
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
        return type(exc).__name__
    out.append(time.perf_counter() - scheduled)
    return None


async def load(port: int, rate: float, seconds: float, timeout: float) -> Result:
    latencies: list[float] = []
    tasks = []
    start = time.perf_counter() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(port, scheduled, latencies, timeout)))
    errors: dict[str, int] = {}
    for problem in await asyncio.gather(*tasks):
        if problem is not None:
            errors[problem] = errors.get(problem, 0) + 1
    return Result(latencies, errors, total)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


def run_case(stack: str, http: str, assistants: int, rate: float, seconds: float, off_loop: bool,
             gc_default: bool) -> Result:
    from tests.helpers import free_port

    port = free_port()
    args = [sys.executable, __file__, "--child", "--stack", stack, "--http", http, "--port", str(port),
            "--assistants", str(assistants)] + (["--build-off-loop"] if off_loop else []) + \
        (["--gc-default"] if gc_default else [])
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        # Let the first publishes and renders happen before measuring.
        asyncio.run(load(port, 5, 2, 10))
        page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        series = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
        print(f"  (the page has {series} series)", flush=True)
        cpu = _cpu_seconds(child.pid)
        result = asyncio.run(load(port, rate, seconds, 10))
        result.server_cpu = _cpu_seconds(child.pid) - cpu
        return result
    finally:
        child.terminate()
        child.wait(timeout=20)


def main() -> None:
    if "--realistic" in sys.argv[1:]:
        import bench_serve_realistic

        sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "--realistic")]
        bench_serve_realistic.main()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", choices=("new", "stdlib"), default="new")
    parser.add_argument("--http", choices=("httptools", "h11"), default="httptools")
    parser.add_argument("--rate", type=float, action="append", help="requests per second (repeatable; default 200)")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--build-off-loop", action="store_true",
                        help="build the families in a worker thread instead of on the loop (as the daemon does)")
    parser.add_argument("--gc-default", action="store_true",
                        help="leave the garbage collector as CPython sets it (the exporter tunes it: gctune.py)")
    parser.add_argument("--realistic", action="store_true",
                        help="the real exporter polling 50 threads while scraped and pushed to "
                             "(bench_serve_realistic.py; its own flags after --realistic)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--assistants", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve(args.stack, args.http, args.port, args.assistants, args.build_off_loop, not args.gc_default)
        return
    where = f"{args.stack}" + (f"/{args.http}" if args.stack == "new" else "") + \
        (" build-off-loop" if args.build_off_loop else "") + (" gc-default" if args.gc_default else " gc-tuned")
    print(f"stack {where}, {os.cpu_count()} cores, open loop, {args.seconds:g}s per case, 10 s timeout")
    print(f"{'series':>8} {'req/s':>6} {'sent':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'cpu %':>6}  goal")
    for assistants, series in CASES:
        for rate in args.rate or [200.0]:
            r = run_case(args.stack, args.http, assistants, rate, args.seconds, args.build_off_loop, args.gc_default)
            goal = f"p99 < {GOAL_P99_MS:g} ms" if series == "~10,000" and rate == 200 else ""
            print(f"{series:>8} {rate:>6g} {r.sent:>6} {sum(r.errors.values()):>6} {_pct(r.latencies, 0.5):>8.1f} "
                  f"{_pct(r.latencies, 0.99):>8.1f} {_pct(r.latencies, 1.0):>8.1f} "
                  f"{100 * r.server_cpu / args.seconds:>6.0f}  {goal}", flush=True)
            if r.errors:
                print(f"{'':>8} errors: {', '.join(f'{k} x{v}' for k, v in sorted(r.errors.items()))}")


if __name__ == "__main__":
    main()
