"""Push throughput and latency against the real exporter, while it also polls the demo's simulator.

    python bench/bench_push.py                 # every phase, 10 s each
    python bench/bench_push.py --seconds 20 --connections 8

The exporter runs as a subprocess, as in production: `--demo --source threads --source push` (so it polls the
built-in simulator every second while it receives pushes), with its state file on disk. Phases:

1. *batches*: closed loop, `--connections` keep-alive connections each POSTing 100-item JSON arrays (every
   run pushed twice, `queued` then `completed`), back to back: items accepted per second.
2. *single*: closed loop, `--single-connections` keep-alive connections each POSTing one item at a time:
   requests answered per second.
3. *open loop*: one-item requests sent at 200 per second on new connections, each latency counted from the
   request's *scheduled* time (queueing in the server shows instead of slowing the generator down): p50/p99.

During each phase (and a quiet one before) /metrics is read every 0.1 s, and *freshness* is the age of
`assistants_exporter_last_poll_success_timestamp_seconds` on the page: how long ago the newest poll result
reached /metrics. The demo polls every second, so the goal is that it stays within 1 + 0.5 s. `cpu %` is the
exporter's CPU time over the phase (100 = one core), and `req/cpu-s` / `items/cpu-s` what it handled per
second of its own CPU time: its capacity on one core, a figure that holds when other load on the machine
starves it (the loop is one thread). The load generator shares the machine's cores with the exporter.
Prints figures beside their goals; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-push-token-0123456789"
GOAL_ITEMS_PER_S = 5000.0
GOAL_SINGLE_PER_S = 500.0
GOAL_P99_MS = 50.0
OPEN_LOOP_RATE = 200.0
DEMO_POLL_INTERVAL = 1.0  # --demo polls threads with unfinished runs at most 1 s apart
GOAL_FRESHNESS = DEMO_POLL_INTERVAL + 0.5


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    requests: int = 0
    items: int = 0  # items accepted
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    freshness: list[float] = field(default_factory=list)
    cpu: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Ids:
    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> range:
        start, self.next = self.next, self.next + n
        return range(start, start + n)


def _item(i: int, status: str, now: int) -> dict[str, object]:
    item: dict[str, object] = {"id": f"run_bench_{i}", "status": status, "thread_id": "thread_bench",
                               "assistant_id": "asst_bench", "model": "gpt-bench", "created_at": now - 10}
    if status == "completed":
        item.update(completed_at=now, usage={"prompt_tokens": 10, "completion_tokens": 5})
    return item


def batch_body(ids: Ids, size: int) -> bytes:
    """Half new runs (`queued`), half the same runs ending (`completed`): every item is accepted."""
    now = int(time.time())
    runs = ids.take(size // 2)
    return json.dumps([_item(i, "queued", now) for i in runs] + [_item(i, "completed", now) for i in runs]).encode()


def single_body(ids: Ids) -> bytes:
    return json.dumps(_item(ids.take(1)[0], "completed", int(time.time()))).encode()


def _request(body: bytes, close: bool) -> bytes:
    return (b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
            (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return code, await reader.readexactly(length)


def _accepted(code: int, body: bytes, phase: Phase) -> None:
    if code != 200:
        phase.error(str(code))
        return
    phase.requests += 1
    phase.items += json.loads(body)["accepted"]


async def closed_loop(port: int, phase: Phase, connections: int, make_body: object, until: float) -> None:
    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < until:
                code, body = await _exchange(reader, writer, _request(make_body(), close=False))  # type: ignore[operator]
                _accepted(code, body, phase)
        except (OSError, asyncio.IncompleteReadError) as exc:
            phase.error(type(exc).__name__)
        finally:
            writer.close()
    await asyncio.gather(*(worker() for _ in range(connections)))


async def open_loop(port: int, phase: Phase, ids: Ids, rate: float, until: float, timeout: float = 10) -> None:
    async def one(scheduled: float, request: bytes) -> None:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    code, body = await _exchange(reader, writer, request)
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            phase.error(type(exc).__name__)
            return
        phase.latencies.append(time.perf_counter() - scheduled)
        _accepted(code, body, phase)

    tasks = []
    start = time.perf_counter() + 0.05
    i = 0
    while (scheduled := start + i / rate) < until:
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)  # the generator's schedule
        tasks.append(asyncio.create_task(one(scheduled, _request(single_body(ids), close=True))))
        i += 1
    await asyncio.gather(*tasks)


async def sample_freshness(url: str, phase: Phase, stop: asyncio.Event) -> None:
    name = "assistants_exporter_last_poll_success_timestamp_seconds "
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            text = (await client.get("/metrics")).text
            line = next((line for line in text.splitlines() if line.startswith(name)), None)
            if line is not None and float(line.split()[1]) > 0:
                phase.freshness.append(time.time() - float(line.split()[1]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)  # the sampling period


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(name: str, url: str, port: int, pid: int, seconds: float, load: object) -> Phase:
    phase = Phase(name, seconds)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_freshness(url, phase, stop))
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    until = started + seconds
    if load is None:
        await asyncio.sleep(seconds)  # the quiet phase: nothing but polls
    else:
        await load(port, phase, until)  # type: ignore[operator]
    phase.seconds = time.perf_counter() - started
    phase.cpu = _cpu_seconds(pid) - cpu
    stop.set()
    await sampler
    return phase


def _pct(values: list[float], q: float, scale: float = 1.0) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale if ordered else float("nan")


def start_exporter(state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "exporter", "--demo", "--source", "threads", "--source", "push",
            "--state-file", str(state_dir / "state.db"), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN}
    proc = subprocess.Popen(args, env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the exporter exited")
        time.sleep(0.1)  # waiting for startup in a script, under a deadline
    proc.kill()
    raise SystemExit("the exporter did not become ready in 60 s")


async def bench(url: str, port: int, pid: int, args: argparse.Namespace) -> list[Phase]:
    ids = Ids()

    async def batches(port: int, phase: Phase, until: float) -> None:
        await closed_loop(port, phase, args.connections, lambda: batch_body(ids, 100), until)

    async def singles(port: int, phase: Phase, until: float) -> None:
        await closed_loop(port, phase, args.single_connections, lambda: single_body(ids), until)

    async def opened(port: int, phase: Phase, until: float) -> None:
        await open_loop(port, phase, ids, OPEN_LOOP_RATE, until)

    phases = [await run_phase("quiet (polls only)", url, port, pid, min(args.seconds, 5), None)]
    for name, load in (("batches of 100", batches), ("single items", singles), ("open loop 200/s", opened)):
        phases.append(await run_phase(name, url, port, pid, args.seconds, load))
    return phases


def report(phases: list[Phase]) -> None:
    print(f"{'phase':<20} {'req/s':>7} {'items/s':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'fresh max s':>11} {'cpu %':>6} {'req/cpu-s':>9} {'items/cpu-s':>11}  goal")
    for p in phases:
        goal = {"batches of 100": f">= {GOAL_ITEMS_PER_S:,.0f} items/s",
                "single items": f">= {GOAL_SINGLE_PER_S:,.0f} req/s",
                "open loop 200/s": f"p99 < {GOAL_P99_MS:g} ms"}.get(p.name, "")
        goal += ("; " if goal else "") + f"fresh max <= {GOAL_FRESHNESS:g} s"
        print(f"{p.name:<20} {p.requests / p.seconds:>7.0f} {p.items / p.seconds:>8.0f} {sum(p.errors.values()):>6} "
              f"{_pct(p.latencies, 0.5, 1e3):>7.1f} {_pct(p.latencies, 0.99, 1e3):>7.1f} "
              f"{max(p.freshness, default=float('nan')):>11.2f} {100 * p.cpu / p.seconds:>6.0f} "
              f"{p.requests / max(p.cpu, 1e-9):>9.0f} {p.items / max(p.cpu, 1e-9):>11.0f}  {goal}")
        if p.errors:
            print(f"{'':<20} errors: {', '.join(f'{k} x{v}' for k, v in sorted(p.errors.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each loaded phase")
    parser.add_argument("--connections", type=int, default=4, help="connections pushing batches")
    # Each request waits for its group commit, so a closed loop's rate is connections / latency: enough
    # connections to measure the exporter, not the wait.
    parser.add_argument("--single-connections", type=int, default=64, help="connections pushing single items")
    args = parser.parse_args()
    from tests.helpers import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as state_dir:
        proc = start_exporter(Path(state_dir), port)
        try:
            print(f"{os.cpu_count()} cores; exporter pid {proc.pid}: --demo --source threads --source push, "
                  f"state file on disk; {args.seconds:g} s per loaded phase")
            phases = asyncio.run(bench(f"http://127.0.0.1:{port}", port, proc.pid, args))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    report(phases)


if __name__ == "__main__":
    main()
