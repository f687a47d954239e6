"""Print the exporter's figures at scale beside their goals: memory per run, restart, scrape, tracker
throughput and commit cost.

    python bench/bench_scale.py [--runs 1000000] [--profile]

Each part runs in a fresh child process (so one part's garbage does not bend the next one's RSS), with a
tracker built through the real path: a JSON page per thread (100 runs) -> json.loads -> parse_run ->
Tracker.observe_listing. Threads hold 100 runs each; run statuses cycle through queued, in_progress,
requires_action, completed, failed and expired; 10 assistants.

- memory: RSS growth of the child ÷ runs tracked (goal <= 300 B at 1M).
- scrape: building the families and rendering the text page, at --runs ÷ at 1,000 runs (goal <= 2).
- throughput: Tracker.observe_run status transitions, and re-observing unchanged listings (goal >= 100k/s).
- commit: one poll-loop tick's Store.commit with 1,000 and 100,000 changed runs (printed, no goal).
- restart: a state file with --runs runs, then the real exporter (`--source threads --source push`, its API
  unreachable) started on it; time from process start until its /metrics reports every run in
  assistants_runs (goal <= 5 s).

--profile adds, for the goals missed, where the memory goes (tracemalloc, top lines, at 100k runs) and where
restart time goes (cProfile of Store.load + Loaded.tracker at --runs, top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import disable_created_metrics, generate_latest  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402

from exporter.metrics import ExporterState, SnapshotCollector, build_families  # noqa: E402
from exporter.model import RunSnapshot, parse_run  # noqa: E402
from exporter.store import Store  # noqa: E402
from exporter.tracker import Tracker  # noqa: E402

STATUSES = ("queued", "in_progress", "requires_action", "completed", "failed", "expired")
PER_THREAD = 100
LABELS = ["assistant_id"]
GOALS = {"memory": 300.0, "scrape": 2.0, "throughput": 100_000.0, "restart": 5.0}
TOKEN = "bench-scale-token-0123456789"


def _rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024.0
    raise RuntimeError("no VmRSS")


def _page(t: int, t0: int) -> bytes:
    tid = f"thread_{t:07d}"
    items = []
    for i in range(PER_THREAD):
        status = STATUSES[i % len(STATUSES)]
        item: dict[str, object] = {"id": f"run_{t:07d}_{i:03d}", "object": "thread.run", "thread_id": tid,
                                   "assistant_id": f"asst_{i % 10}", "model": "gpt-4o", "status": status,
                                   "created_at": t0 + i, "started_at": t0 + i + 1}
        if status in ("completed", "failed"):
            item[f"{status}_at"] = t0 + i + 9
        if status == "expired":
            item["expires_at"] = t0 + i + 600
        items.append(item)
    return json.dumps({"object": "list", "data": items, "has_more": False}).encode()


def build(runs: int, t0: int, keep_changes: bool = False) -> Tracker:
    """A tracker with `runs` runs, through json.loads -> parse_run -> observe_listing."""
    tracker = Tracker(LABELS, 3600)
    for t in range(max(1, runs // PER_THREAD)):
        tid = f"thread_{t:07d}"
        tracker.observe_listing(tid, [], t0, complete=True, ok=True)  # first poll: what follows is not history
        snaps = [s for item in json.loads(_page(t, t0))["data"]
                 if (s := parse_run(item, tid).snapshot) is not None]
        tracker.observe_listing(tid, snaps, t0 + 700, complete=True, ok=True)
        if keep_changes:
            continue
        tracker.take_changes()  # as the daemon does every tick: pending store writes are not tracked state
        tracker.aggregates.take_dirty()
    return tracker


def part_memory(runs: int) -> None:
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    tracker = build(runs, int(time.time()) - 900)
    elapsed = time.perf_counter() - start
    gc.collect()
    per_run = (_rss() - before) / runs
    print(f"memory per tracked run at {runs:,} runs: {per_run:,.0f} B (goal <= {GOALS['memory']:.0f} B) "
          f"[{'met' if per_run <= GOALS['memory'] else 'MISSED by ' + format(per_run / GOALS['memory'], '.1f') + 'x'}]"
          f"; built in {elapsed:.1f} s ({runs / elapsed:,.0f} runs/s through json -> parse -> observe)")
    del tracker


def _scrape_seconds(tracker: Tracker, now: float) -> float:
    collector = SnapshotCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        collector.update(build_families(tracker, ExporterState(), now))
        generate_latest(registry)
        best = min(best, time.perf_counter() - start)
    return best


def _top(profiler: cProfile.Profile, title: str) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
    print(title)
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


def part_scrape(runs: int, profile: bool) -> None:
    disable_created_metrics()  # type: ignore[no-untyped-call]
    t0 = int(time.time()) - 900
    small = _scrape_seconds(build(1_000, t0), t0 + 800)
    tracker = build(runs, t0)
    big = _scrape_seconds(tracker, t0 + 800)
    ratio = big / small
    print(f"scrape (build families + render) at {runs:,} runs ÷ at 1,000: {ratio:.2f} (goal <= {GOALS['scrape']:g}) "
          f"[{'met' if ratio <= GOALS['scrape'] else 'MISSED'}]; {small * 1e3:.1f} ms vs {big * 1e3:.1f} ms")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        build_families(tracker, ExporterState(), t0 + 800)
        profiler.disable()
        _top(profiler, f"scrape profile at {runs:,} runs (build_families, top by own time):")


def part_throughput(runs: int) -> None:
    t0 = int(time.time()) - 900
    tracker = build(min(runs, 10_000), t0)
    # Transitions: one run at a time, each observation a status change of an unfinished run.
    n = 200_000
    pool = 5_000
    # in_progress <-> requires_action (tool calls) is a legal cycle, so every observation is a real transition.
    snaps = [[RunSnapshot(f"push_{i}", f"thread_p{i % 50}", status, t0 + 1, assistant_id="asst_0",
                          started_at=t0 + 2) for status in ("in_progress", "requires_action")]
             for i in range(pool)]
    start = time.perf_counter()
    for k in range(n):
        tracker.observe_run(snaps[k % pool][(k // pool) % 2], t0 + 800 + k * 1e-4)
    transitions = n / (time.perf_counter() - start)
    # Re-observing: listings whose runs are all unchanged.
    listings = [(f"thread_{t:07d}", [s for item in json.loads(_page(t, t0))["data"]
                                      if (s := parse_run(item, f"thread_{t:07d}").snapshot) is not None])
                for t in range(min(runs, 10_000) // PER_THREAD)]
    start = time.perf_counter()
    seen = 0
    for rep in range(5):
        for tid, batch in listings:
            tracker.observe_listing(tid, batch, t0 + 900 + rep, complete=True, ok=True)
            seen += len(batch)
    reobserve = seen / (time.perf_counter() - start)
    goal = GOALS["throughput"]
    print(f"tracker throughput: {transitions:,.0f} transitions/s (observe_run), {reobserve:,.0f} re-observations/s "
          f"(observe_listing) (goal >= {goal:,.0f}/s) [{'met' if min(transitions, reobserve) >= goal else 'MISSED'}]")


def part_commit(runs: int) -> None:
    t0 = int(time.time()) - 900
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "state.db", LABELS)
        store.load()
        tracker = build(min(runs, 200_000), t0, keep_changes=True)
        store.commit(tracker.take_changes())
        figures = []
        for changed in (1_000, 100_000):
            for i in range(changed):  # unfinished runs move on: queued -> in_progress, etc.
                tracker.observe_run(RunSnapshot(f"tick_{changed}_{i}", f"thread_t{i % 1000}", "in_progress",
                                                t0 + 1, assistant_id="asst_0", started_at=t0 + 2), t0 + 850)
            changes = tracker.take_changes()
            start = time.perf_counter()
            store.commit(changes)
            figures.append(f"{(time.perf_counter() - start) * 1e3:,.0f} ms at {changed:,}")
        store.close()
    print(f"commit cost per tick by changed runs: {', '.join(figures)} (printed; no goal)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _runs_gauge(url: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("assistants_runs{"))


def part_restart(runs: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        store = Store(state, LABELS)
        store.load()
        tracker = build(runs, int(time.time()) - 900, keep_changes=True)
        store.commit(tracker.take_changes())
        store.close()
        del tracker
        gc.collect()
        size = state.stat().st_size
        threads = Path(tmp) / "threads.txt"  # scopes not watched any more would be dropped at start
        threads.write_text("".join(f"thread_{t:07d}\n" for t in range(max(1, runs // PER_THREAD))))
        port = _free_port()
        # The runs came from the threads source, which exports only when on; its API is unreachable on purpose
        # (port 9): the figure is the time to serve the stored state, not to poll.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN,
               "OPENAI_API_KEY": "bench-not-a-key"}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--source", "threads", "--source", "push",
                                 "--api-base", "http://127.0.0.1:9/v1", "--threads-file", str(threads),
                                 "--state-file", str(state),
                                 "--listen", f"127.0.0.1:{port}", "--log-level", "warning"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            while (seen := _runs_gauge(f"http://127.0.0.1:{port}/metrics")) != runs:
                if proc.poll() is not None or time.monotonic() - start > 120:
                    raise SystemExit(f"restart: exporter exited or took > 120 s (last saw {seen} runs)")
                time.sleep(0.05)  # the benchmark's polling cadence
            elapsed = time.monotonic() - start
        finally:
            proc.terminate()
            proc.wait(30)
        goal = GOALS["restart"]
        verdict = "met" if elapsed <= goal else f"MISSED by {elapsed - goal:.1f} s"
        print(f"restart with {runs:,} runs in the state file ({size / 2**20:,.0f} MiB): {elapsed:.1f} s to correct "
              f"metrics (goal <= {goal:g} s) [{verdict}]")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            Store(state, LABELS).load().tracker(LABELS, 3600)
            profiler.disable()
            _top(profiler, "restart profile (Store.load + Loaded.tracker, top by own time):")


def part_memory_profile(runs: int) -> None:
    sample = min(runs, 100_000)
    tracemalloc.start()
    tracker = build(sample, int(time.time()) - 900)
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"where the memory goes at {sample:,} runs (tracemalloc, bytes per run by line):")
    for stat in snapshot.statistics("lineno")[:10]:
        frame = stat.traceback[0]
        print(f"  {stat.size / sample:>7.0f} B  {Path(frame.filename).name}:{frame.lineno}")
    del tracker


PARTS = ("throughput", "scrape", "commit", "memory", "restart")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--part", choices=(*PARTS, "memory-profile"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part is None:
        parts = [*PARTS, "memory-profile"] if args.profile else list(PARTS)
        for part in parts:
            cmd = [sys.executable, __file__, "--runs", str(args.runs), "--part", part]
            subprocess.run(cmd + (["--profile"] if args.profile else []), check=True)
        return
    if args.part == "memory":
        part_memory(args.runs)
    elif args.part == "scrape":
        part_scrape(args.runs, args.profile)
    elif args.part == "throughput":
        part_throughput(args.runs)
    elif args.part == "commit":
        part_commit(args.runs)
    elif args.part == "restart":
        part_restart(args.runs, args.profile)
    else:
        part_memory_profile(args.runs)


if __name__ == "__main__":
    main()
