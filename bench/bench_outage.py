"""Outage: the real exporter behind a proxy that makes the API hang, then refuse connections, then come back.

Prints how long `assistants_exporter_api_up` takes to follow each change, how many requests the exporter
makes while the API is away, and how long after the first answer every thread has been polled again, beside
the goals: api_up 0 within max(--poll-interval, 10 s) of a hang; one probe at a time while the API refuses;
every thread polled within one poll interval of the probe that finds the API back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.simulator import Simulator
from tests.exporter_process import ExporterProcess, total
from tests.helpers import wait_until
from tests.outage_proxy import OutageProxy


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=50, help="threads watched (default 50)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="the exporter's --poll-interval (default 1)")
    p.add_argument("--refuse-seconds", type=float, default=30.0, help="how long connections are refused")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sim = Simulator(scenario="steady", seed=3, speed=40).start()
    sim.engine.set_workload(False)
    threads = sim.thread_ids()
    threads += [sim.engine.create_thread() for _ in range(max(0, args.threads - len(threads)))]
    proxy = OutageProxy(sim.port).start()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "threads.txt").write_text("\n".join(threads) + "\n")
        exporter = ExporterProcess(
            ["--api-base", proxy.url + "/v1", "--threads-file", str(Path(tmp) / "threads.txt"),
             "--state-file", str(Path(tmp) / "state.db"), "--poll-interval", str(args.poll_interval),
             "--idle-poll-interval", str(max(2.0, args.poll_interval)), "--max-requests-per-second", "500"],
            {"OPENAI_API_KEY": "sk-bench-outage"}, Path(tmp) / "exporter.log").start()
        try:
            return measure(exporter, proxy, threads, args)
        finally:
            exporter.stop()
            proxy.stop()
            sim.stop()


def api_up(exporter: ExporterProcess) -> float:
    return total(exporter.scrape(), "assistants_exporter_api_up", source="threads")


def failed_requests(exporter: ExporterProcess) -> float:
    samples = exporter.scrape()
    return sum(total(samples, "assistants_exporter_api_requests_total", code=code)
               for code in ("connection_error", "timeout"))


def measure(exporter: ExporterProcess, proxy: OutageProxy, threads: list[str], args: argparse.Namespace) -> int:
    exporter.wait_ready(60)
    wait_until(lambda: api_up(exporter) == 1, 30, 0.1, "api_up 1")
    hang_goal = max(args.poll_interval, 10.0)

    proxy.hang()
    t0 = time.monotonic()
    wait_until(lambda: api_up(exporter) == 0, 60, 0.05, "api_up 0")
    hang_to_down = time.monotonic() - t0

    proxy.refuse()
    t1 = time.monotonic()
    before = failed_requests(exporter)
    wait_until(lambda: time.monotonic() >= t1 + args.refuse_seconds, args.refuse_seconds + 5, 0.1, "the outage")
    refused_rate = (failed_requests(exporter) - before) / args.refuse_seconds

    proxy.restore()
    t2 = time.monotonic()
    wait_until(lambda: api_up(exporter) == 1, 120, 0.05, "api_up 1 again")
    back_to_up = time.monotonic() - t2
    first = min(t for t, _ in proxy.forwarded if t >= t2)
    wait_until(lambda: {th for t, th in proxy.forwarded if t >= first} >= set(threads), 600, 0.05, "all polled")
    spread = max(min(t for t, th in proxy.forwarded if t >= first and th == want) for want in threads) - first

    print(f"threads: {len(threads)}, --poll-interval {args.poll_interval:g}s, refused for {args.refuse_seconds:g}s")
    print(f"hang -> api_up 0:               {hang_to_down:6.2f} s   (goal <= {hang_goal:g} s)")
    print(f"failed requests while refused:  {refused_rate:6.2f} /s  (goal: one probe at a time, "
          f"<= {3 / args.poll_interval:g}/s with its 3 attempts)")
    print(f"back -> first request:          {first - t2:6.2f} s   (goal <= the probe delay, at most 10 s)")
    print(f"back -> api_up 1:               {back_to_up:6.2f} s")
    print(f"first request -> every thread:  {spread:6.2f} s   (goal <= {args.poll_interval:g} s)")
    ok = hang_to_down <= hang_goal + 1 and spread <= args.poll_interval + 0.5
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
