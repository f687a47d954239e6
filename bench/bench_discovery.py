"""Print what Foundry thread discovery costs against the foundry simulator over loopback HTTP.

    python bench/bench_discovery.py

Goals (issue 8): in steady state one listing request per discover interval; a first pass over N threads
within the lookback costs N/100 + 1 requests. Also prints the page parser's throughput. Asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from exporter.simulator import FakeClock, Simulator
from exporter.sources.foundry import Discovered, discover_threads, parse_threads_page

START = 1_760_000_000.0


async def _passes(sim: Simulator, since: float, clock: FakeClock) -> tuple[Discovered, float, Discovered, float]:
    token = httpx.get(
        sim.identity_endpoint,
        params={"resource": "https://ai.azure.com", "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": sim.identity_header},
    ).json()["access_token"]
    async with httpx.AsyncClient(base_url=sim.base_url, headers={"Authorization": f"Bearer {token}"}) as http:

        async def fetch(params: dict[str, str]) -> bytes | None:
            resp = await http.get("/threads", params={**params, "api-version": "v1"})
            return resp.content if resp.status_code == 200 else None

        known: set[str] = set()
        t = time.perf_counter()
        first = await discover_threads(fetch, known.__contains__, since)
        first_s = time.perf_counter() - t
        known.update(th.id for th in first.threads)
        clock.advance(60)
        for _ in range(5):  # five conversations started during the interval
            sim.engine.create_thread()
        t = time.perf_counter()
        steady = await discover_threads(fetch, known.__contains__, since)
        return first, first_s, steady, time.perf_counter() - t


def main() -> None:
    for old, recent in ((1_000, 1_000), (5_000, 5_000)):
        clock = FakeClock(start=START)
        with Simulator(scenario="steady", clock=clock, flavor="foundry") as sim:
            sim.engine.set_workload(False)
            for _ in range(old):  # outside the lookback
                sim.engine.create_thread()
            clock.advance(10)
            since = clock.now()
            for i in range(recent):
                sim.engine.create_thread()
                if i % 10 == 9:
                    clock.advance(1)
            first, first_s, steady, steady_s = asyncio.run(_passes(sim, since, clock))
        print(
            f"{old + recent:>6} threads, {recent} in the lookback: first pass {first.requests} requests "
            f"(goal {recent // 100 + 1}), {len(first.threads)} found, {first_s * 1000:.0f} ms; "
            f"steady pass {steady.requests} request (goal 1), {len(steady.threads)} new, {steady_s * 1000:.1f} ms"
        )
    data = [{"id": f"thread_{i:024d}", "object": "thread", "created_at": 1_760_000_000 + i} for i in range(100)]
    page = json.dumps({"data": data, "last_id": "thread_x", "has_more": True}).encode()
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        parse_threads_page(page)
    per_page = (time.perf_counter() - t) / n
    print(f"parse_threads_page: {per_page * 1e6:.0f} µs per 100-thread page (goal: well under a request's latency)")


if __name__ == "__main__":
    main()
