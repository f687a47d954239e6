"""Remembering finished runs: memory, restart, ingest and the state file, over HTTP against the real exporter.

    python bench/bench_remember.py                      # 1,000,000 runs (about 10 minutes on 2 cores)
    python bench/bench_remember.py --runs 100000        # a quicker look

The exporter runs as a subprocess, as in production: `--source push`, its state file on disk, the default
one-hour `--terminal-retention` and 72-hour dedupe window. The scenario of issue 22:
1. `--runs` finished runs pushed as minimal items (id, status, created_at, completed_at), 1,000 per request
   over 4 keep-alive connections, their ends spread over the last 48 hours: inside the dedupe window, nearly
   all past retention (so *remembered*: recognised by id, no longer on the gauges);
2. RSS growth per run (VmRSS of the exporter before and after, the retained ones included);
3. 2,000 of them sent again: every one must be a duplicate, nothing counted twice;
4. `kill -9`, start again: seconds until /metrics serves every counter (the sum of
   assistants_runs_finished_total equals what was pushed), and the RSS then;
5. the state file's size and bytes per run;
6. full RunObjects in 100-item batches (4 connections, `queued` then `completed` for each run) for
   `--seconds`: items accepted per second.
Prints every figure beside its goal and the load average; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-remember-token-0123456789"
GOAL_BYTES_PER_RUN = 64.0
GOAL_RESTART_S = 5.0
GOAL_MINIMAL_PER_S = 20_000.0
GOAL_OBJECTS_PER_S = 5_000.0
SPREAD = 48 * 3600


def start_exporter(state: Path, port: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "exporter",
        "--source",
        "push",
        "--state-file",
        str(state),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN}
    return subprocess.Popen(args, env=env, cwd=ROOT)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def finished_total(port: int) -> float | None:
    """The sum of assistants_runs_finished_total on /metrics, or None while not serving."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("assistants_runs_finished_total{")
    )


def wait_serving(port: int, proc: subprocess.Popen[bytes], want: float, deadline_s: float = 600) -> float:
    """Seconds until /metrics shows `want` finished runs (polled every 50 ms: a script waiting, not a test)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if proc.poll() is not None:
            raise SystemExit("the exporter exited")
        total = finished_total(port)
        if total is not None and total >= want:
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"the counters did not reach {want:g} in {deadline_s:g} s")


def minimal_body(first: int, n: int, now: int) -> bytes:
    items = []
    for i in range(first, first + n):
        end = now - 60 - (i * 7919) % SPREAD  # spread over the last 48 hours, not in id order
        items.append({"id": f"run_{i:09d}", "status": "completed", "created_at": end - 30, "completed_at": end})
    return json.dumps(items).encode()


def object_body(first: int, n: int, now: int) -> bytes:
    """Full Assistants RunObjects: half the runs `queued`, the same runs then `completed`."""

    def obj(i: int, status: str) -> dict[str, object]:
        run: dict[str, object] = {
            "id": f"run_obj_{i:09d}",
            "object": "thread.run",
            "created_at": now - 20,
            "thread_id": "thread_bench",
            "assistant_id": "asst_bench",
            "status": status,
            "required_action": None,
            "last_error": None,
            "expires_at": now + 600,
            "started_at": now - 15,
            "cancelled_at": None,
            "failed_at": None,
            "completed_at": None,
            "incomplete_details": None,
            "model": "gpt-4o",
            "instructions": "Be brief.",
            "tools": [],
            "metadata": {},
            "usage": None,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_prompt_tokens": None,
            "max_completion_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "response_format": "auto",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }
        if status == "completed":
            run.update(completed_at=now, usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
        return run

    half = range(first, first + n // 2)
    return json.dumps([obj(i, "queued") for i in half] + [obj(i, "completed") for i in half]).encode()


def request(body: bytes) -> bytes:
    return (
        b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def push(
    port: int, bodies: list[bytes] | None, make: object, connections: int, until: float = float("inf")
) -> dict[str, int]:
    """POST bodies over keep-alive connections (from the list, or made until `until`); summed answers."""
    totals = {"accepted": 0, "duplicates": 0, "stale": 0, "requests": 0, "errors": 0}
    queue = list(reversed(bodies)) if bodies is not None else None

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                if queue is not None:
                    if not queue:
                        return
                    body = queue.pop()
                elif time.perf_counter() >= until:
                    return
                else:
                    body = make()  # type: ignore[operator]
                writer.write(request(body))
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                answer = await reader.readexactly(length)
                if int(head.split(b" ", 2)[1]) != 200:
                    totals["errors"] += 1
                    continue
                decoded = json.loads(answer)
                totals["requests"] += 1
                for key in ("accepted", "duplicates", "stale"):
                    totals[key] += int(decoded.get(key, 0))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return totals


def ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the exporter exited")
        time.sleep(0.1)
    raise SystemExit("the exporter did not become ready")


def row(name: str, value: str, goal: str) -> None:
    print(f"{name:<52} {value:>18}   goal {goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the RunObject phase")
    args = parser.parse_args()
    from tests.helpers import free_port

    port = free_port()
    print(f"{os.cpu_count()} cores; load average before {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        proc = start_exporter(state, port)
        try:
            ready(port, proc)
            base = rss_bytes(proc.pid)
            now = int(time.time())
            bodies = [minimal_body(i, min(args.batch, args.runs - i), now) for i in range(0, args.runs, args.batch)]
            started, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
            sent = asyncio.run(push(port, bodies, None, args.connections))
            push_s, push_cpu = time.perf_counter() - started, cpu_seconds(proc.pid) - cpu0
            load_push = os.getloadavg()
            grown = rss_bytes(proc.pid)
            resend = asyncio.run(push(port, [minimal_body(i, 1000, now) for i in (0, args.runs // 2)], None, 2))
            counted = finished_total(port)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            size = state.stat().st_size + sum(p.stat().st_size for p in state.parent.glob("state.db-*"))
            restart_at = time.monotonic()
            proc = start_exporter(state, port)
            serving = wait_serving(port, proc, sent["accepted"]) + 0.0
            restart_s = time.monotonic() - restart_at
            del serving
            after = rss_bytes(proc.pid)
            first = [args.runs]

            def objects() -> bytes:
                first[0] += 100
                return object_body(first[0], 100, int(time.time()))

            started, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
            obj = asyncio.run(push(port, None, objects, args.connections, time.perf_counter() + args.seconds))
            obj_s, obj_cpu = time.perf_counter() - started, cpu_seconds(proc.pid) - cpu0
            load_end = os.getloadavg()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    n = sent["accepted"]
    print(
        f"pushed {args.runs:,} runs in {args.runs // args.batch:,} requests of {args.batch:,} over "
        f"{args.connections} connections: {sent}"
    )
    row("RSS per remembered run (growth / runs)", f"{(grown - base) / n:,.0f} B", f"<= {GOAL_BYTES_PER_RUN:g} B")
    row("  RSS before / after the push / after restart", f"{base >> 20} / {grown >> 20} / {after >> 20} MiB", "")
    row(
        "  RSS per run after restart ((after - before) / runs)",
        f"{(after - base) / n:,.0f} B",
        f"<= {GOAL_BYTES_PER_RUN:g} B",
    )
    row("push, 1,000-item minimal requests", f"{args.runs / push_s:,.0f} items/s", f">= {GOAL_MINIMAL_PER_S:,.0f}")
    row("  per second of the exporter's CPU", f"{args.runs / max(push_cpu, 1e-9):,.0f} items", "")
    row("push, 100-item RunObject batches", f"{obj['accepted'] / obj_s:,.0f} items/s", f">= {GOAL_OBJECTS_PER_S:,.0f}")
    row("  per second of the exporter's CPU", f"{obj['accepted'] / max(obj_cpu, 1e-9):,.0f} items", "")
    row(
        "resend of 2,000: duplicates / accepted / stale",
        f"{resend['duplicates']} / {resend['accepted']} / {resend['stale']}",
        "2000 / 0 / 0",
    )
    row("  finished runs counted (after the resend)", f"{counted:,.0f}", f"{n:,}")
    row("restart after kill -9 until every counter is served", f"{restart_s:.1f} s", f"<= {GOAL_RESTART_S:g} s")
    row("state file (with WAL)", f"{size / 2**20:,.1f} MiB", "bounded by the window")
    row("  bytes per run", f"{size / n:,.0f} B", "printed")
    print(f"load average after the push {load_push}, at the end {load_end}; errors {sent['errors'] + obj['errors']}")


if __name__ == "__main__":
    main()
