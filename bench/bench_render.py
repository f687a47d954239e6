"""Cost of a /metrics page of ~11,000 series under pushes, on one core, in-process: snapshot, build, write, gzip.

    python bench/bench_render.py [--assistants 50] [--steps 60] [--pushes 20]

The fleet has `--assistants` label sets (`--labels assistant_id`, one `source` each), ~220 series each: half
are bench_scrape's polled threads (200 runs per assistant), half are pushed, with what the exporter sees
between two renders under 100 pushes a second (a render at most every 0.2 s): `--pushes` runs
pushed per step, each new run queued then, a step later, in progress, then ended (completed, failed or
expired, tokens and errors included), across every assistant; the clock moves 0.2 s a step (ages and windowed
ratios move with it); the exporter's own counters move (API requests, pushes, poll durations). Each step does
what the exporter does for a scrape after a change: `snapshot` on the loop, then in the render thread
`build` (metrics.families), `write` (exposition.Renderer, in the format Prometheus asks for) and `gzip`
(level 1, ISA-L as pages.py does; zlib's beside it).

Prints the median of each part and of a render (build + write + gzip) beside the goal (<= 10 ms on one core),
with the machine's load average; then the same after 20 steps where every counter and histogram moved (every
line written again); and, for reference, a cold render (nothing kept, as the first scrape after a start) and
prometheus_client's generate_latest of the same families. Checks every step's page against prometheus_client's encoder.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scrape import T0, _tracker  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402

from exporter import metrics_spec as m  # noqa: E402
from exporter.exposition import Families, Renderer  # noqa: E402
from exporter.familybuild import FamilyBuilder  # noqa: E402
from exporter.gctune import tune_after_load  # noqa: E402
from exporter.metrics import ExporterState, families, snapshot  # noqa: E402
from exporter.model import RunSnapshot  # noqa: E402
from exporter.pages import gzip_page  # noqa: E402
from exporter.tracker import Tracker  # noqa: E402

GOAL_MS = 10.0
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
ENDINGS = ("completed", "completed", "completed", "failed", "expired", "cancelled", "incomplete")


class Pushes:
    """Runs pushed into the tracker as the push receiver hands them over: new, in progress, ended."""

    def __init__(self, tracker: Tracker, assistants: int, per_step: int) -> None:
        self.tracker, self.assistants, self.per_step = tracker, assistants, per_step
        self.made = 0
        self.queued: list[RunSnapshot] = []
        self.running: list[RunSnapshot] = []

    def step(self, now: float) -> None:
        agg, second = self.tracker.aggregates, int(now)
        for snap in self.running:
            ending = ENDINGS[self.made % len(ENDINGS)]
            self.tracker.observe_run(RunSnapshot(
                snap.id, "", ending, snap.created_at, assistant_id=snap.assistant_id, source="push",
                started_at=snap.created_at, completed_at=second, failed_at=second, cancelled_at=second,
                error_code="server_error" if ending == "failed" else None, prompt_tokens=120,
                completion_tokens=40), now)
        self.running = [RunSnapshot(s.id, "", "in_progress", s.created_at, assistant_id=s.assistant_id,
                                    source="push", started_at=second) for s in self.queued]
        for snap in self.running:
            self.tracker.observe_run(snap, now)
        self.queued = []
        for _ in range(self.per_step):
            self.made += 1
            snap = RunSnapshot(f"push_{self.made}", "", "queued", second, source="push",
                               assistant_id=f"asst_{(self.made * 7) % self.assistants}")
            self.tracker.observe_run(snap, now)
            self.queued.append(snap)
        self.tracker.take_changes()  # as the daemon does once a tick is committed
        agg.inc(m.API_REQUESTS.name, ("threads", "list_runs", "200"), 10)
        agg.inc(m.PUSH_REQUESTS.name, ("202",), self.per_step)
        agg.observe(m.POLL_DURATION.name, (), 0.004 + (self.made % 5) / 1000)


def move_everything(tracker: Tracker) -> None:
    """Every counter and every histogram bucket moves: the worst case, where every line is written again."""
    agg = tracker.aggregates
    for key in agg.counters:
        agg.counters[key] += 1
    for hist in agg.histograms.values():
        for i in range(len(hist.counts)):
            hist.counts[i] += 1
        hist.sum += 1.5
        hist.count += len(hist.counts)


def _times(fn: Callable[[], object], repeat: int = 5) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _median(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assistants", type=int, default=50)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pushes", type=int, default=20, help="runs pushed between two renders (default 20)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    polled = args.assistants // 2
    tracker = _tracker(polled * 200, polled)
    tune_after_load()  # as the exporter does once its state is loaded
    state = ExporterState(api_up={"threads": 1.0, "push": 1.0}, rate_limit_remaining=100)
    encoder = choose_encoder(PROMETHEUS_ACCEPT)[0]
    builder, renderer, pushes = FamilyBuilder(), Renderer(), Pushes(tracker, args.assistants - polled, args.pushes)
    parts: dict[str, list[float]] = {name: [] for name in ("snapshot", "build", "write", "gzip", "render", "zlib")}
    now = float(T0 + 20)
    everything: list[float] = []
    for step in range(args.steps + 3 + 20):
        now += 0.2
        pushes.step(now)
        if step >= args.steps + 3:
            move_everything(tracker)
        t0 = time.perf_counter()
        snap = snapshot(tracker, state, now, ("threads", "push"), ("threads",))
        t1 = time.perf_counter()
        fams = families(snap, builder)
        t2 = time.perf_counter()
        page = renderer.render(fams, encoder)
        t3 = time.perf_counter()
        gzip_page(page)
        t4 = time.perf_counter()
        gzip.compress(page, compresslevel=1)
        t5 = time.perf_counter()
        if page != encoder(Families(fams)):
            raise SystemExit(f"step {step}: the page differs from prometheus_client's")
        if step >= args.steps + 3:
            everything.append(t4 - t1)
        elif step >= 3:  # the first builds and renders are the start's
            for name, spent in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t1, t5 - t4), strict=True):
                parts[name].append(spent)
    series = sum(1 for line in page.splitlines() if line and not line.startswith(b"#"))
    cold = _times(lambda: Renderer().render(families(snap, FamilyBuilder()), encoder))
    reference = _times(lambda: encoder(Families(fams)))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{series} series, {len(page) / 1e6:.2f} MB page, {args.pushes} runs pushed a step, "
          f"{args.steps} steps, one core, load average {load}")
    print(f"  snapshot (on the loop)          {_median(parts['snapshot'])}")
    print(f"  build                           {_median(parts['build'])}")
    print(f"  write                           {_median(parts['write'])}")
    print(f"  gzip level 1 (ISA-L)            {_median(parts['gzip'])}   (zlib: {_median(parts['zlib'])})")
    print(f"  render: build + write + gzip    {_median(parts['render'])}   goal <= {GOAL_MS:g} ms"
          f"   (max {max(parts['render']) * 1e3:.2f} ms)")
    print(f"  every value new: build + write + gzip     {_median(everything)}   goal <= {GOAL_MS:g} ms")
    print(f"  cold: build + write, nothing kept         {_median(cold)}   goal <= {GOAL_MS:g} ms")
    print(f"  prometheus_client generate_latest         {_median(reference)}")


if __name__ == "__main__":
    main()
