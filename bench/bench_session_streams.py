"""Print the economy and freshness of the sessions source with live streams and session webhooks, beside
today's polling, for the same workload, through the real exporter (a subprocess) and the simulator.

    nice -n 19 python bench/bench_session_streams.py [--sessions 1000] [--active 0.05] [--scale 10] [--intervals 3]

`--sessions` sessions, `--active` of them with a turn at any time: a driver keeps that many turns running
(each ~2 s of work at speed 1 ÷ scale; when one ends, the next turn goes to the same session, or with
probability 0.3 to an idle one, which must then be noticed). Two exporters run one after the other on twin
simulators with the same workload, with times divided by `--scale` (default 10: poll 5 s -> 0.5 s):

- today: `--session-streams 0`, no webhooks, `--poll-interval 5`, `--idle-poll-interval 60`,
  `--discover-interval 60` (÷ scale);
- live: `--session-streams 100` and signed session webhooks, `--poll-interval 5`, `--idle-poll-interval 600`,
  `--discover-interval 600` (÷ scale): the README's advice, since webhooks say when an idle session wakes.

Each records every API request for `--intervals` idle intervals (today's: 60 s ÷ scale) after settling, then
stops the workload and compares its finished totals with the simulator's truth. Printed: requests per idle
interval of each, their ratio (goal <= 0.2), whether the totals are exact (goal: both), and for the live one the
lag from a turn's creation and from its end to its count on /metrics (sampled every 50 ms), p50/p95 (goals:
an end within 1 s at p95 while its stream is up; a creation within 2 s, which for a session that was idle
means via its webhook).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.simulator import Simulator
from exporter.simulator.webhooks import Announcers, WebhookSender
from tests.exporter_process import ExporterProcess, total

SECRET = "whsec_" + base64.b64encode(b"bench-session-streams-secret-123").decode()
GOAL_RATIO = 0.2
GOAL_END_LAG = 1.0
GOAL_CREATE_LAG = 2.0


@dataclass
class Driver:
    """Keeps `active` turns running across `sessions`; records when each turn was created and ends."""

    sim: Simulator
    sessions: list[str]
    active: int
    work: float
    rng: random.Random
    created: list[float] = field(default_factory=list)  # wall times
    ends: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        running = {sid: 0.0 for sid in self.sessions[: self.active]}  # session -> when its turn ends (wall)
        idle = self.sessions[self.active:]
        for sid in list(running):
            running[sid] = self._turn(sid)
        while not self.stop.wait(0.02):
            now = time.time()
            for sid, ends in list(running.items()):
                if ends > now:
                    continue
                del running[sid]
                if self.rng.random() < 0.3:  # the activity moves to an idle session
                    idle.append(sid)
                    sid = idle.pop(self.rng.randrange(len(idle) - 1))
                running[sid] = self._turn(sid)

    def _turn(self, sid: str) -> float:
        queued, work = 0.05, self.work * self.rng.uniform(0.5, 1.5)
        outcome = self.rng.choices(("completed", "failed"), (0.9, 0.1))[0]
        self.sim.sessions.create_turn(sid, [("queued", queued), ("in_progress", work), (outcome, 0.0)])
        now = time.time()
        self.created.append(now)
        self.ends.append(now + queued + work)
        return now + queued + work + 0.01


@dataclass
class Outcome:
    requests: float
    seconds: float
    exact: bool
    finished: float
    truth: int
    create_lags: list[float]
    end_lags: list[float]


def _lags(events: list[float], seen: list[tuple[float, float]], lo: float, hi: float) -> list[float]:
    """For each event at a time within [lo, hi]: when the exporter's count (of all such events so far) first
    reached its rank, minus the event's time. `seen`: (wall time, count) samples, in time order."""
    lags: list[float] = []
    j = 0
    for rank, at in enumerate(sorted(events), start=1):
        while j < len(seen) and (seen[j][1] < rank or seen[j][0] < at):
            j += 1
        if j == len(seen):
            break
        if lo <= at <= hi:
            lags.append(seen[j][0] - at)
    return lags


def run(mode: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    scale = args.scale
    sim = Simulator(seed=args.seed).start()
    sids = [sim.sessions.create_session(agent_id="agent_bench") for _ in range(args.sessions)]
    sim.sessions.take_events()
    flags = ["--source", "sessions", "--api-base", sim.base_url, "--state-file", str(tmp / f"{mode}.db"),
             "--poll-interval", str(5 / scale), "--max-requests-per-second", "2000", "--max-concurrency", "32"]
    live = mode == "live"
    if live:
        (tmp / "secrets").write_text(SECRET + "\n")
        flags += ["--session-streams", "100", "--idle-poll-interval", str(600 / scale), "--discover-interval",
                  str(600 / scale), "--webhook-secret-file", str(tmp / "secrets")]
    else:
        flags += ["--session-streams", "0", "--idle-poll-interval", str(60 / scale), "--discover-interval",
                  str(60 / scale)]
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    exporter = ExporterProcess(flags, env, tmp / f"{mode}.log").start()
    sender = None
    driver = Driver(sim, sids, int(args.sessions * args.active), 20.0 / scale, random.Random(args.seed))
    try:
        exporter.wait_ready(60)
        deadline = time.monotonic() + 120
        # Every session discovered and listed once: a turn that ends before its session's first listing would
        # be history (the sessions existed before the exporter started).
        while total(exporter.scrape(), "assistants_exporter_api_requests_total", endpoint="list_turns",
                    code="200") < args.sessions:
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: sessions not all listed")
            time.sleep(0.2)
        if live:
            sender = WebhookSender(Announcers(sim.sessions), exporter.url + "/webhooks/openai", SECRET).start()
        since = int(time.time()) + 1
        while time.time() < since:
            time.sleep(0.01)
        thread = threading.Thread(target=driver.run, daemon=True)
        thread.start()
        time.sleep(60 / scale)  # settle: one idle interval of today's
        seen: list[tuple[float, float, float]] = []  # (wall, turns seen, turns counted as finished)
        start_requests, started = total(exporter.scrape(), "assistants_exporter_api_requests_total"), time.time()
        window = args.intervals * 60 / scale
        while time.time() < started + window:
            created, finished = _counts(exporter)
            seen.append((time.time(), created, finished))
            time.sleep(0.05)
        requests = total(exporter.scrape(), "assistants_exporter_api_requests_total") - start_requests
        seconds = time.time() - started
        driver.stop.set()
        thread.join()
        deadline = time.monotonic() + 60
        finished, truth = 0.0, -1
        while time.monotonic() < deadline:
            finished = sum(_by_status(exporter).values())
            truth = sum(sim.sessions.truth(since).finished.values())
            if finished == truth and all(s in ("completed", "failed") for s in sim.sessions.truth().by_status):
                break
            time.sleep(0.2)
        lo, hi = started + 1, started + window - 2  # events whose count the samples can see
        create_lags = _lags(driver.created, [(w, c) for w, c, _ in seen], lo, hi)
        end_lags = _lags(driver.ends, [(w, f) for w, _, f in seen], lo, hi)
        return Outcome(requests, seconds, finished == truth, finished, truth, create_lags, end_lags)
    finally:
        driver.stop.set()
        if sender is not None:
            sender.stop()
        exporter.stop()
        sim.stop()


def _counts(exporter: ExporterProcess) -> tuple[float, float]:
    samples = exporter.scrape()
    finished = total(samples, "assistants_runs_finished_total")
    open_now = sum(total(samples, "assistants_runs", status=s) for s in ("queued", "in_progress",
                                                                          "requires_action"))
    return finished + open_now, finished


def _by_status(exporter: ExporterProcess) -> dict[str, float]:
    samples = exporter.scrape()
    return {s: total(samples, "assistants_runs_finished_total", status=s) for s in ("completed", "failed")}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--active", type=float, default=0.05)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        today = run("today", args, Path(tmp))
        live = run("live", args, Path(tmp))
    per = 60 / args.scale
    a, b = today.requests / today.seconds * per, live.requests / live.seconds * per
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {args.sessions} sessions, "
          f"{args.active:.0%} active, times / {args.scale:g}")
    print(f"requests per idle interval: today {a:.0f}, live {b:.0f}; ratio {b / a:.3f} (goal <= {GOAL_RATIO})")
    for name, o in (("today", today), ("live", live)):
        print(f"  {name}: totals {'exact' if o.exact else 'NOT EXACT'} ({o.finished:.0f} counted, {o.truth} true)")
    print(f"live, a turn's end on /metrics after it happened: p50 {_pct(live.end_lags, 50):.2f}s "
          f"p95 {_pct(live.end_lags, 95):.2f}s over {len(live.end_lags)} ends (goal p95 <= {GOAL_END_LAG}s)")
    print(f"live, a turn's creation on /metrics: p50 {_pct(live.create_lags, 50):.2f}s "
          f"p95 {_pct(live.create_lags, 95):.2f}s over {len(live.create_lags)} turns (goal p95 <= {GOAL_CREATE_LAG}s)")
    ok = (b / a <= GOAL_RATIO and today.exact and live.exact and _pct(live.end_lags, 95) <= GOAL_END_LAG
          and _pct(live.create_lags, 95) <= GOAL_CREATE_LAG)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
