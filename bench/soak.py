"""Soak: the real exporter against the simulator with every fault on, killed with SIGKILL at random moments.

    nice -n 19 python bench/soak.py --minutes 20 [--seed 1] [--speed 40] [--max-up 15] [--max-down 5]

Starts the simulator (scenario `steady`, durations divided by --speed) with every fault knob on: an
org-wide rate limit answering 429, random 500/503, slow responses, malformed list items and truncated
bodies. Runs `python -m exporter` on a state file, and for --minutes kills it with SIGKILL after a random
0.5..--max-up seconds (whether or not it is ready, so start-up and mid-poll kills both happen), waits a
random 0..--max-down seconds while runs keep ending, and restarts it on the same state file. Then it stops
the arrivals, lets every run finish, and compares the exporter's finished totals, error codes, incomplete
reasons and tokens with the simulator's ground truth. Prints the figures and PASS or FAIL (exit 1).

Deleted threads, the one fault left out, make runs vanish from the API by design, so the truth and the
exporter legitimately differ on them; tests/test_integration.py covers them.
Not run in CI: it is long by design.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter import statuses
from exporter.simulator import Simulator
from tests.exporter_process import ExporterProcess, Samples, by_label, total
from tests.helpers import wait_until

API_KEY = "sk-soak-not-a-real-key"


@dataclass
class Figures:
    kills: int = 0
    kills_before_ready: int = 0
    restarts_ready: int = 0
    downtime: float = 0.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="how long to kill and restart (default 20)")
    p.add_argument("--seed", type=int, default=1, help="seeds the simulator, its faults and the kill times")
    p.add_argument("--speed", type=float, default=40.0, help="simulated durations are divided by this")
    p.add_argument("--max-up", type=float, default=15.0, help="longest time an exporter lives before its kill")
    p.add_argument("--max-down", type=float, default=5.0, help="longest time between a kill and the restart")
    p.add_argument("--lose-state", action="store_true",
                   help="delete the state file at every kill: the run must FAIL (shows that the check bites)")
    return p.parse_args(argv)


def start_simulator(seed: int, speed: float) -> Simulator:
    sim = Simulator(scenario="steady", seed=seed, speed=speed).start()
    sim.engine.set_workload(False)
    sim.api_key = API_KEY
    faults = sim.faults
    faults.rate_limit_rps = 25.0
    faults.rate_limit_burst = 5
    faults.error_rate = 0.05
    faults.latency = 0.02
    faults.malformed_rate = 0.2
    faults.truncate_rate = 0.03
    return sim


def start_exporter(sim: Simulator, work: Path) -> ExporterProcess:
    threads = work / "threads.txt"
    if not threads.exists():
        threads.write_text("\n".join(sim.thread_ids()) + "\n", encoding="utf-8")
    args = ["--api-base", sim.base_url, "--threads-file", str(threads), "--state-file", str(work / "state.db"),
            "--poll-interval", "0.2", "--idle-poll-interval", "0.5", "--max-requests-per-second", "500"]
    return ExporterProcess(args, {"OPENAI_API_KEY": API_KEY}, work / "exporter.log").start()


def unfinished(sim: Simulator) -> int:
    by_status = sim.engine.truth().by_status
    return sum(by_status.get(s, 0) for s in statuses.NON_TERMINAL)


def is_ready(exporter: ExporterProcess) -> bool:
    r = exporter.get("/readyz")
    return r is not None and r.status_code == 200


def kill_and_restart(exporter: ExporterProcess, sim: Simulator, work: Path, minutes: float, rng: random.Random,
                     max_up: float, max_down: float, lose_state: bool) -> tuple[ExporterProcess, Figures]:
    figures = Figures()
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        up_until = time.monotonic() + rng.uniform(0.5, max_up)
        ready = False
        while time.monotonic() < up_until:
            ready = ready or is_ready(exporter)
            assert exporter.proc is not None
            if exporter.proc.poll() is not None:
                raise SystemExit(f"FAIL: the exporter exited by itself (code {exporter.proc.returncode}); "
                                 f"see {work / 'exporter.log'}")
            time.sleep(min(0.1, max(0.0, up_until - time.monotonic())))  # waiting for the kill moment
        exporter.kill9()
        figures.kills += 1
        figures.restarts_ready += ready
        figures.kills_before_ready += not ready
        if lose_state:
            for path in work.glob("state.db*"):
                path.unlink()
        down = rng.uniform(0.0, max_down)
        figures.downtime += down
        time.sleep(down)  # runs keep ending while the exporter is down: that is the point
        exporter = start_exporter(sim, work)
    return exporter, figures


def compare(samples: Samples, sim: Simulator, since: int) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """(what, exporter, truth) for each figure compared; zeros dropped so absent and 0 agree."""
    truth = sim.engine.truth(since)

    def nonzero(d: dict[str, float]) -> dict[str, float]:
        return {k: float(v) for k, v in sorted(d.items()) if v}

    return [
        ("finished", nonzero(by_label(samples, "assistants_runs_finished_total", "status")), nonzero(
            {k: float(v) for k, v in truth.finished.items()})),
        ("error codes", nonzero(by_label(samples, "assistants_run_errors_total", "code")), nonzero(
            {k: float(v) for k, v in truth.error_codes.items()})),
        ("incomplete reasons", nonzero(by_label(samples, "assistants_run_incomplete_total", "reason")), nonzero(
            {k: float(v) for k, v in truth.incomplete_reasons.items()})),
        ("tokens", nonzero(by_label(samples, "assistants_run_tokens_total", "type")), nonzero(
            {k: float(v) for k, v in truth.tokens.items()})),
    ]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        sim = start_simulator(args.seed, args.speed)
        exporter: ExporterProcess | None = None
        try:
            wait_until(lambda: unfinished(sim) == 0, 120, 0.2, "the simulator's seeded runs to finish")
            # The seeded runs are history: the exporter must have read them all before arrivals start,
            # or a run that starts and ends before its thread's first poll would be history too.
            exporter = start_exporter(sim, work)
            exporter.wait_ready(60)
            known = sum(sim.engine.truth().by_status.values())
            first = exporter
            wait_until(lambda: total(first.scrape(), "assistants_runs") == known, 60, 0.2, "the initial sweep")
            # Arrivals start at the next whole second: everything finishing from then on must be counted.
            since = sim.engine.truth().now + 1
            wait_until(lambda: sim.engine.now() >= since, 5, 0.05, "the next second")
            sim.engine.set_workload(True)
            exporter, figures = kill_and_restart(exporter, sim, work, args.minutes, rng, args.max_up, args.max_down,
                                                 args.lose_state)
            sim.engine.set_workload(False)
            wait_until(lambda: unfinished(sim) == 0, 120, 0.2, "every run to finish")
            want = compare({}, sim, since)[0][2]
            exporter.wait_ready(60)
            last = exporter
            with contextlib.suppress(AssertionError):  # a timeout is reported below, as a FAIL with figures
                wait_until(lambda: compare(last.scrape(), sim, since)[0][1] == want, 120, 0.5,
                           "the finished totals to settle")
            samples = exporter.scrape()
            rows = compare(samples, sim, since)
            requests = by_label(samples, "assistants_exporter_api_requests_total", "code")
            invalid = by_label(samples, "assistants_exporter_invalid_objects_total", "reason")
        finally:
            if exporter is not None:
                exporter.stop()
            sim.stop()
    ok = all(mine == truth for _, mine, truth in rows)
    elapsed = time.monotonic() - started
    print(f"soak: {args.minutes:g} min of kills, {elapsed:.0f} s in all, seed {args.seed}, speed {args.speed:g}")
    print(f"  kill -9: {figures.kills} ({figures.kills_before_ready} before /readyz answered 200), "
          f"{figures.downtime:.0f} s down in total")
    print(f"  runs finished (truth): {sum(rows[0][2].values()):.0f}")
    for what, mine, truth in rows:
        print(f"  {what:19} {'ok  ' if mine == truth else 'DIFF'} exporter {mine}")
        if mine != truth:
            print(f"  {'':19}      truth    {truth}")
    print(f"  API answers counted (by code): {dict(sorted(requests.items()))}")
    print(f"  invalid objects counted (by reason): {dict(sorted(invalid.items()))}")
    print("PASS (goal: every figure equals the truth)" if ok else "FAIL (goal: every figure equals the truth)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
