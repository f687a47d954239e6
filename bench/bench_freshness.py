"""Print API economy and freshness of active threads, through the real Daemon + Scheduler + AssistantsSource.

    python bench/bench_freshness.py [--threads 1000] [--active 0.05] [--runs 120] [--speed 4] [--intervals 3]

1,000 threads (5% with an unfinished run, the rest idle with only finished runs; `--runs` runs each, so a full
listing is 2 pages of 100) are served from precomputed pages over httpx.MockTransport. The daemon runs with
--poll-interval 2, --idle-poll-interval 60, --max-concurrency 8 and --max-requests-per-second 50 (idle polls
alone need 950/60 = 16/s and active ones 50/2 = 25/s), all divided (rates multiplied) by `--speed`, in real
time, on a temporary state file. After the start-up sweep and one idle interval of settling, it records every
request for `--intervals` idle intervals and prints:

- requests per idle interval, beside the ideal (each active thread once per poll interval, each idle thread
  once per idle interval, one page each) and a naive poller (every thread listed in full every poll interval);
- freshness: the gaps between the starts of consecutive polls of each active thread, p50/p95/max, ÷ the poll
  interval (goal p95 <= 1.25).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from exporter.metrics import SnapshotCollector
from exporter.scheduler import Schedule
from exporter.sources.assistants import ApiSettings, AssistantsSource
from exporter.store import Store
from exporter.tracker import Tracker
from exporter.watchlist import WatchList

T0 = 1_700_000_000
PAGE = 100
POLL, IDLE, RPS, CONCURRENCY = 2.0, 60.0, 50.0, 8
GOAL_FRESHNESS = 1.25
GOAL_VS_NAIVE = 10.0
GOAL_VS_IDEAL = 1.1


def build_pages(threads: int, active: int, runs: int) -> dict[tuple[str, str | None], bytes]:
    """(thread_id, after) -> page body; the first `active` threads have an in_progress newest run."""
    pages: dict[tuple[str, str | None], bytes] = {}
    for t in range(threads):
        tid = f"thread_{t:05d}"
        items: list[dict[str, object]] = []
        for i in reversed(range(runs)):
            item: dict[str, object] = {
                "id": f"run_{t:05d}_{i:05d}", "object": "thread.run", "thread_id": tid,
                "assistant_id": "asst_bench", "status": "completed", "created_at": T0 + i,
                "started_at": T0 + i + 1, "completed_at": T0 + i + 5, "model": "gpt-4o"}
            if t < active and i == runs - 1:
                item.update(status="in_progress", completed_at=None)
            items.append(item)
        after: str | None = None
        for start in range(0, runs, PAGE):
            chunk = items[start:start + PAGE]
            pages[(tid, after)] = json.dumps({
                "object": "list", "data": chunk, "first_id": chunk[0]["id"], "last_id": chunk[-1]["id"],
                "has_more": start + PAGE < runs}).encode()
            after = str(chunk[-1]["id"])
    return pages


class Recorder:
    def __init__(self) -> None:
        self.recording = False
        self.requests: list[tuple[float, str, bool]] = []  # (monotonic, thread, first page)

    def transport(self, pages: dict[tuple[str, str | None], bytes]) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            tid = request.url.path.rstrip("/").split("/")[-2]
            after = request.url.params.get("after")
            if self.recording:
                self.requests.append((time.monotonic(), tid, after is None))
            body = pages.get((tid, after))
            if body is None:
                return httpx.Response(404, json={"error": {"message": "No thread found"}})
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})

        return httpx.MockTransport(handler)


async def run(threads: int, active: int, runs: int, speed: float, intervals: int) -> tuple[Recorder, float]:
    poll, idle = POLL / speed, IDLE / speed
    pages = build_pages(threads, active, runs)
    recorder = Recorder()
    source = AssistantsSource(
        ApiSettings(base_url="http://api.invalid/v1", api_key="bench", max_concurrency=CONCURRENCY,
                    max_requests_per_second=RPS * speed),
        transport=recorder.transport(pages))
    with tempfile.TemporaryDirectory() as tmp:
        from exporter.daemon import Daemon

        ids = [f"thread_{t:05d}" for t in range(threads)]
        daemon = Daemon(sources={"threads": source}, tracker=Tracker(["assistant_id"], 3600),
                        store=Store(Path(tmp) / "state.db", ["assistant_id"]), collector=SnapshotCollector(),
                        schedule=Schedule(poll, idle, max_in_flight=CONCURRENCY), watchlist=WatchList(ids),
                        run_sources=("threads",))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        swept = time.monotonic()
        while sum(1 for s in daemon.scheduler.slots.values() if s.polls) < threads:
            await asyncio.sleep(0.1)  # the benchmark's own cadence while the start-up sweep runs
        sweep = time.monotonic() - swept
        await asyncio.sleep(idle)  # settle: every idle thread's spread first interval has passed
        recorder.recording = True
        start = time.monotonic()
        await asyncio.sleep(idle * intervals)
        recorder.recording = False
        window = time.monotonic() - start
        stop.set()
        await task
    print(f"start-up sweep of {threads} threads: {sweep:.1f} s; measured over {window:.1f} s "
          f"({window / idle:.2f} idle intervals of {idle:g} s; poll interval {poll:g} s)")
    return recorder, window


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def report(recorder: Recorder, window: float, threads: int, active: int, runs: int, speed: float) -> None:
    poll, idle = POLL / speed, IDLE / speed
    per_interval = len(recorder.requests) * idle / window
    ideal = active * (idle / poll) + (threads - active)
    naive = threads * math.ceil(runs / PAGE) * (idle / poll)
    print(f"{'figure':<58} {'measured':>10} {'goal':>12}")
    print(f"{'API requests per idle interval':<58} {per_interval:>10.0f}")
    print(f"{'  ideal (1 page per due poll)':<58} {ideal:>10.0f}")
    print(f"{'  naive (every thread in full every poll interval)':<58} {naive:>10.0f}")
    print(f"{'  ÷ ideal':<58} {per_interval / ideal:>10.2f} {'<= ' + str(GOAL_VS_IDEAL):>12}")
    print(f"{'  naive ÷ measured (times fewer than naive)':<58} {naive / per_interval:>10.1f} "
          f"{'>= ' + str(GOAL_VS_NAIVE):>12}")
    starts: dict[str, list[float]] = defaultdict(list)
    for at, tid, first in recorder.requests:
        if first:
            starts[tid].append(at)
    active_ids = {f"thread_{t:05d}" for t in range(active)}
    gaps = [b - a for tid in active_ids for a, b in zip(starts[tid], starts[tid][1:], strict=False)]
    if not gaps:
        print("no active thread was polled twice in the window")
        return
    p95 = percentile(gaps, 0.95)
    print(f"{'freshness: gap between polls of an active thread, p50 ÷ poll':<58} "
          f"{statistics.median(gaps) / poll:>10.2f}")
    print(f"{'freshness: p95 ÷ poll interval':<58} {p95 / poll:>10.2f} {'<= ' + str(GOAL_FRESHNESS):>12}"
          f"   (p95 {p95 * speed:.2f} s at a {POLL:g} s interval, in unscaled time)")
    print(f"{'freshness: max ÷ poll interval':<58} {max(gaps) / poll:>10.2f}")
    idle_polls = sum(1 for _, tid, first in recorder.requests if first and tid not in active_ids)
    print(f"idle threads polled in the window: {idle_polls} ({idle_polls * idle / window:.0f} per idle interval, "
          f"{threads - active} idle threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--active", type=float, default=0.05, help="share of threads with an unfinished run")
    parser.add_argument("--runs", type=int, default=120, help="runs per thread")
    parser.add_argument("--speed", type=float, default=4.0, help="intervals divided by, rates multiplied by")
    parser.add_argument("--intervals", type=int, default=3, help="idle intervals measured")
    args = parser.parse_args()
    active = round(args.threads * args.active)
    recorder, window = asyncio.run(run(args.threads, active, args.runs, args.speed, args.intervals))
    report(recorder, window, args.threads, active, args.runs, args.speed)


if __name__ == "__main__":
    main()
