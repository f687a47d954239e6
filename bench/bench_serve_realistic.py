"""Serving while polling and pushing: the real exporter polling 50 threads against the simulator on loopback.

    python bench/bench_serve.py --realistic                 # or: python bench/bench_serve_realistic.py
    python bench/bench_serve_realistic.py --seconds 20 --profile /tmp/prof   # py-spy of each phase too

Three processes, as a new user would run it: the simulator (50 threads, one assistant each, every thread
getting a new run every ~8 s so that most threads stay active), the exporter (`--labels assistant_id
--poll-interval 1 --idle-poll-interval 2 --source threads --source push`, ~10,900 series), and this load
generator. Phases, `--seconds` each:

1. *unscraped*: nobody reads anything; the exporter's CPU time divided by the API requests it made (read from
   its own api_requests_total before and after): goal <= 2 ms per request.
2. *probes*: /healthz at 20 requests/s on one kept-alive connection (the issue's 957 ms p50 figure).
3. *scraped*: open loop, /metrics at 200 requests/s on new connections with Prometheus' Accept and
   Accept-Encoding: gzip, and /healthz at 20 requests/s beside it: p50/p99 of each (goals: /metrics p99
   < 50 ms, /healthz p99 < 10 ms), latencies from each request's *scheduled* time.
4. *scraped + pushes*: the same, plus single-item pushes at 100 requests/s.

Prints every figure beside its goal, with the load average when it was measured; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.exporter_process import ExporterProcess, total  # noqa: E402

TOKEN = "bench-serve-push-token-0123456789"
THREADS = 50
GOAL_CPU_MS_PER_REQUEST = 2.0
GOAL_METRICS_P99_MS = 50.0
GOAL_HEALTHZ_P99_MS = 10.0
METRICS_RATE = 200.0
HEALTHZ_RATE = 20.0
PUSH_RATE = 100.0
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


# --- the simulator (child process) ----------------------------------------------------------------------------


def simulate(threads: int, seed: int) -> None:
    """Serve the simulator; print its base URL and thread ids as one JSON line; feed runs until killed."""
    from exporter.simulator import Simulator

    sim = Simulator(scenario="steady", seed=seed, speed=1).start()
    sim.engine.set_workload(False)  # only the runs made here, on these threads, with these assistants
    ids = [sim.engine.create_thread() for _ in range(threads)]
    rng = random.Random(seed)
    for i, thread in enumerate(ids):
        for _ in range(3):
            sim.engine.create_run(thread, assistant_id=f"asst_{i:02d}")
    print(json.dumps({"base_url": sim.base_url, "threads": ids}), flush=True)
    while True:  # each thread a new run every ~8 s: most threads have one going, as in a busy fleet
        time.sleep(0.25)
        for _ in range(max(1, round(threads * 0.25 / 8))):
            i = rng.randrange(threads)
            sim.engine.create_run(ids[i], assistant_id=f"asst_{i:02d}")


# --- load ------------------------------------------------------------------------------------------------------


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> str | None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        None,
    )
    if length is None:
        return "no content-length"
    await reader.readexactly(length)
    return None if status.startswith("2") else status


async def _one(port: int, request: bytes, scheduled: float, load: Load) -> None:
    """One request on its own connection, its latency counted from when it was scheduled."""
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                problem = await _exchange(reader, writer, request)
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
        problem = type(exc).__name__
    if problem is None:
        load.latencies.append(time.perf_counter() - scheduled)
    else:
        load.error(problem)


async def open_loop(port: int, make_request: object, rate: float, seconds: float, load: Load) -> None:
    start = time.perf_counter() + 0.01
    tasks = []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(port, make_request(), scheduled, load)))  # type: ignore[operator]
    await asyncio.gather(*tasks)


async def one_connection(port: int, request: bytes, rate: float, seconds: float, load: Load) -> None:
    """Requests at `rate` on one kept-alive connection; a late answer delays the next (measured from schedule)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    try:
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            problem = await _exchange(reader, writer, request)
            if problem is None:
                load.latencies.append(time.perf_counter() - scheduled)
            else:
                load.error(problem)
    finally:
        writer.close()


def _get(path: str, extra: bytes = b"", close: bool = True) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + extra
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )


METRICS_REQUEST = _get("/metrics", f"Accept: {PROMETHEUS_ACCEPT}\r\nAccept-Encoding: gzip\r\n".encode())


def push_request(counter: list[int]) -> bytes:
    counter[0] += 1
    i = counter[0]
    now = int(time.time())
    body = json.dumps(
        {
            "id": f"run_push_{i}",
            "status": "completed",
            "thread_id": "thread_push",
            "assistant_id": f"asst_{i % THREADS:02d}",
            "created_at": now - 5,
            "completed_at": now,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }
    ).encode()
    return (
        b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


# --- measuring -------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


def load_average() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def api_requests(exporter: ExporterProcess) -> float:
    return total(exporter.scrape(), "assistants_exporter_api_requests_total")


class Profiler:
    """py-spy of the exporter over one phase (raw collapsed stacks), when --profile is given."""

    def __init__(self, out: Path | None, pid: int) -> None:
        self.out, self.pid = out, pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, phase: str, seconds: float) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--threads",
                "--output",
                str(self.out / f"{phase}.txt"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=60)
            self.proc = None


def report(what: str, value: str, goal: str) -> None:
    print(f"  {what:<44} {value:>24}   {goal:<22} ({load_average()})", flush=True)


def latency_line(what: str, load: Load, goal_ms: float | None) -> None:
    errors = f", {sum(load.errors.values())} errors {load.errors}" if load.errors else ""
    value = f"p50 {pct(load.latencies, 0.5):.1f} / p99 {pct(load.latencies, 0.99):.1f} ms"
    report(what + errors, value, f"p99 < {goal_ms:g} ms" if goal_ms else "")


async def scraped_phase(port: int, seconds: float, pushes: bool) -> tuple[Load, Load, Load]:
    metrics, healthz, pushed = Load(), Load(), Load()
    counter = [0]
    jobs = [
        open_loop(port, lambda: METRICS_REQUEST, METRICS_RATE, seconds, metrics),
        open_loop(port, lambda: _get("/healthz"), HEALTHZ_RATE, seconds, healthz),
    ]
    if pushes:
        jobs.append(open_loop(port, lambda: push_request(counter), PUSH_RATE, seconds, pushed))
    await asyncio.gather(*jobs)
    return metrics, healthz, pushed


def measure(exporter: ExporterProcess, pid: int, seconds: float, profiler: Profiler) -> None:
    page = exporter.scrape_text()
    series = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
    print(f"{os.cpu_count()} cores; exporter pid {pid}; {series} series on the page; {seconds:g} s a phase", flush=True)

    before, cpu = api_requests(exporter), cpu_seconds(pid)
    profiler.start("unscraped", seconds)
    time.sleep(seconds)  # the phase itself: nobody asks the exporter anything
    used = cpu_seconds(pid) - cpu
    profiler.stop()
    requests = api_requests(exporter) - before
    report(
        "unscraped: CPU per API request",
        f"{1e3 * used / max(requests, 1):.2f} ms ({requests / seconds:.0f}/s)",
        f"<= {GOAL_CPU_MS_PER_REQUEST:g} ms",
    )
    report("unscraped: exporter CPU", f"{100 * used / seconds:.0f}% of a core", "")

    probes = Load()
    asyncio.run(one_connection(exporter.port, _get("/healthz", close=False), HEALTHZ_RATE, seconds, probes))
    latency_line("probes only: /healthz 20/s, one connection", probes, None)

    for name, pushes in (("scraped", False), ("scraped+pushes", True)):
        cpu = cpu_seconds(pid)
        profiler.start(name.replace("+", "_"), seconds)
        metrics, healthz, pushed = asyncio.run(scraped_phase(exporter.port, seconds, pushes))
        profiler.stop()
        used = cpu_seconds(pid) - cpu
        latency_line(f"{name}: /metrics 200/s gzip", metrics, GOAL_METRICS_P99_MS)
        latency_line(f"{name}: /healthz 20/s", healthz, GOAL_HEALTHZ_P99_MS)
        if pushes:
            latency_line(f"{name}: push 100/s", pushed, None)
        report(f"{name}: exporter CPU", f"{100 * used / seconds:.0f}% of a core", "")
    page = exporter.scrape_text()  # pushes carry source="push": their assistants are label sets of their own
    series = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
    report("series on the page after the pushes", f"{series}", "")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    report("exporter memory: RSS now / peak", f"{status['VmRSS'].strip()} / {status['VmHWM'].strip()}", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default 15)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of polling before measuring")
    parser.add_argument("--profile", type=Path, help="write py-spy raw stacks of each phase to this directory")
    parser.add_argument("--log", type=Path, help="keep the exporter's log here")
    parser.add_argument("--simulate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        simulate(THREADS, 7)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = subprocess.Popen([sys.executable, __file__, "--simulate"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert sim.stdout is not None
        world = json.loads(sim.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            threads_file = Path(tmp) / "threads.txt"
            threads_file.write_text("\n".join(world["threads"]) + "\n")
            exporter = ExporterProcess(
                [
                    "--api-base",
                    world["base_url"],
                    "--threads-file",
                    str(threads_file),
                    "--state-file",
                    str(Path(tmp) / "state.db"),
                    "--labels",
                    "assistant_id",
                    "--poll-interval",
                    "1",
                    "--idle-poll-interval",
                    "2",
                    "--max-requests-per-second",
                    "500",
                    "--source",
                    "threads",
                    "--source",
                    "push",
                    "--log-level",
                    "warning",
                ],
                {"OPENAI_API_KEY": "sk-bench-serve", "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN},
                Path(tmp) / "exporter.log",
            ).start()
            try:
                exporter.wait_ready(60)
                time.sleep(args.warmup)  # polling settles: every thread read, the page at full size
                assert exporter.proc is not None
                measure(exporter, exporter.proc.pid, args.seconds, Profiler(args.profile, exporter.proc.pid))
            finally:
                exporter.stop()
                if args.log is not None:
                    shutil.copy(Path(tmp) / "exporter.log", args.log)
    finally:
        sim.terminate()
        sim.wait(timeout=20)


if __name__ == "__main__":
    main()
