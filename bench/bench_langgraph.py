"""API requests per idle interval of the real exporter (`--source langgraph --discover-threads`) against the real
LangGraph Agent Server (`langgraph dev`, in memory), beside the ideal and a naive poller.

    nice -n 19 python bench/bench_langgraph.py [--threads 40] [--runs 3] [--intervals 10]

`--threads` threads get `--runs` runs each (through the official SDK) and are left to finish; the exporter
then discovers them and, once every thread is idle, its requests are counted over `--intervals` idle
intervals. The ideal is one listing per idle thread per idle interval plus one search per discovery pass. The
naive poller lists every thread in full every poll interval and the whole thread list every discovery
interval; its pages are counted against the same server. Prints the figures beside the goals (within 1.1x
the ideal, at least 10x fewer than naive) and the load average. Asserts nothing. Needs `langgraph` and
`langgraph-sdk` (the dev extra).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.exporter_process import ExporterProcess, total  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.langgraph_support import langgraph_dev, server_runs  # noqa: E402

# The defaults' proportions (--poll-interval 5, --idle-poll-interval 60, --discover-interval 60), 20x faster.
POLL, IDLE, DISCOVER = 0.25, 3.0, 3.0
PAGE = 100


def _workload(base: str, threads: int, runs: int) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=base)
    for n in range(threads):
        thread = client.threads.create()["thread_id"]
        for k in range(runs):
            client.runs.create(thread, ("work", "fail", "ask")[(n + k) % 3], input={"seconds": 0.05},
                               multitask_strategy="enqueue")
    wait_until(lambda: all(r["status"] not in ("pending", "running") for r in server_runs(client).values()),
               300, 0.5, "every run to end")


def _naive_pages(base: str) -> tuple[int, int]:
    """(pages to list every thread's runs in full, pages to list every thread): what a naive poller reads."""
    with httpx.Client(base_url=base, timeout=30) as http:
        ids: list[str] = []
        search_pages = 0
        while True:
            page = http.post("/threads/search", json={"limit": PAGE, "offset": len(ids),
                                                      "select": ["thread_id"]}).json()
            search_pages += 1
            ids += [t["thread_id"] for t in page]
            if len(page) < PAGE:
                break
        run_pages = 0
        for thread in ids:
            offset = 0
            while True:
                page = http.get(f"/threads/{thread}/runs", params={"limit": PAGE, "offset": offset}).json()
                run_pages += 1
                offset += len(page)
                if len(page) < PAGE:
                    break
    return run_pages, search_pages


def _requests(exporter: ExporterProcess) -> dict[str, float]:
    samples = exporter.scrape()
    return {endpoint: total(samples, "assistants_exporter_api_requests_total", endpoint=endpoint)
            for endpoint in ("list_runs", "search_threads")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--intervals", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-langgraph-") as tmp, langgraph_dev(Path(tmp)) as base:
        _workload(base, args.threads, args.runs)
        flags = ["--source", "langgraph", "--discover-threads", "--api-base", base, "--state-file",
                 f"{tmp}/state.db", "--poll-interval", str(POLL), "--idle-poll-interval", str(IDLE),
                 "--discover-interval", str(DISCOVER), "--max-requests-per-second", "1000"]
        exporter = ExporterProcess(flags, {"OPENAI_API_KEY": ""}, Path(tmp) / "exporter.log").start()
        try:
            exporter.wait_ready()
            wait_until(lambda: total(exporter.scrape(), "assistants_exporter_threads", state="idle") == args.threads,
                       120, 0.2, "every thread discovered and idle")
            time.sleep(2 * IDLE)  # past the first idle interval's random phase (a measurement window, not a sync)
            before, started = _requests(exporter), time.monotonic()
            time.sleep(args.intervals * IDLE)  # the measured window
            after, elapsed = _requests(exporter), time.monotonic() - started
        finally:
            exporter.stop()
        run_pages, search_pages = _naive_pages(base)
    intervals = elapsed / IDLE
    made = {k: (after[k] - before[k]) / intervals for k in after}
    ideal = args.threads + IDLE / DISCOVER
    naive = run_pages * IDLE / POLL + search_pages * IDLE / DISCOVER
    got = sum(made.values())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.threads} idle threads x {args.runs} runs, idle interval {IDLE:g}s, poll {POLL:g}s, discovery "
          f"{DISCOVER:g}s, window {elapsed:.1f}s ({intervals:.1f} idle intervals); load average {load}")
    print(f"requests per idle interval: {got:.1f} ({made['list_runs']:.1f} run listings, "
          f"{made['search_threads']:.2f} thread searches)")
    print(f"ideal: {ideal:.1f}  ratio {got / ideal:.2f} (goal <= 1.10)")
    print(f"naive: {naive:.1f} ({run_pages} run pages every poll interval, {search_pages} search pages every "
          f"discovery interval)  {naive / got if got else math.inf:.1f}x fewer (goal >= 10x)")


if __name__ == "__main__":
    main()
