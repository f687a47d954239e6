"""CPU per poll of a small page: the real AssistantsSource against the simulator, in another process.

    python bench/bench_poll_cost.py [--rounds 150] [--profile]

The simulator is bench_serve_realistic.py's (50 threads, one assistant each, runs arriving), served from its
own process so that only the client's work is counted. Polls go 8 at a time (the default --max-concurrency)
over kept-alive connections, each reading the first page (up to 100 runs, newest first) and stopping there,
as a poll of a thread with nothing new does. Prints this process's CPU time per poll beside the goal
(<= 1 ms), with the load average; `--profile` adds where it goes (cProfile, slower). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporter.sources.api import ApiSettings  # noqa: E402
from exporter.sources.assistants import AssistantsSource  # noqa: E402

GOAL_MS = 1.0
CONCURRENCY = 8


async def polls(base_url: str, threads: list[str], rounds: int, profile: cProfile.Profile | None) -> float:
    """CPU milliseconds per poll over `rounds` rounds of CONCURRENCY polls (after one warm-up round)."""
    source = AssistantsSource(
        ApiSettings(base_url=base_url, api_key="sk-bench", max_requests_per_second=1e6, max_concurrency=CONCURRENCY)
    )
    try:
        for thread in threads:  # connections open, first reads done
            await source.poll(thread, lambda seen: True)
        started = time.process_time()
        if profile is not None:
            profile.enable()
        for i in range(rounds):
            batch = [threads[(i * CONCURRENCY + j) % len(threads)] for j in range(CONCURRENCY)]
            await asyncio.gather(*(source.poll(thread, lambda seen: True) for thread in batch))
        if profile is not None:
            profile.disable()
        return 1e3 * (time.process_time() - started) / (rounds * CONCURRENCY)
    finally:
        await source.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bench_serve_realistic.py"), "--simulate"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert sim.stdout is not None
        world = json.loads(sim.stdout.readline())
        ms = asyncio.run(polls(world["base_url"], world["threads"], args.rounds, None))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"CPU per poll of a small page: {ms:.2f} ms   goal <= {GOAL_MS:g} ms   (load {load})")
        if args.profile:
            profile = cProfile.Profile()
            asyncio.run(polls(world["base_url"], world["threads"], args.rounds, profile))
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    finally:
        sim.terminate()
        sim.wait(timeout=20)


if __name__ == "__main__":
    main()
