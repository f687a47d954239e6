"""LangGraph Agent Server (LangGraph Platform, LangSmith Deployment; self-hosted or cloud): its threads' runs.

A thread is a scope: `GET {api-base}/threads/{thread_id}/runs?limit=L&offset=O&select=...` lists its runs
newest first (by `created_at`) as a bare JSON array, polled under the listing stop rule, so a steady-state
poll is one request. `--discover-threads` searches `POST {api-base}/threads/search` sorted by `updated_at`,
newest first: a pass stops at the first thread not changed since the newest change the last finished pass
saw (less SETTLE seconds for commits that land late), so an idle pass is one request too. Found threads
created after the last finished pass began are born watched (all their runs count), as for Foundry. Every
thread a pass reads reports its `updated_at` as its last activity, so a discovered thread leaves the watch
list only once it has been idle for the whole lookback, however long ago it was created.

The API pages by offset, not cursor, so a list that changes during a poll shifts under it: a run created
meanwhile pushes the older ones down (they would be read twice), a run deleted (a cancel with
action=rollback) pulls them up (one would be skipped). Each page after the first therefore starts OVERLAP
items before the previous one ended and must hold one of that page's last OVERLAP runs; the runs after the
newest of those are the next ones, exactly, and runs read twice are dropped by id. A page that holds none of
them (more than OVERLAP runs moved between two requests) ends the poll as failed: the scope's coverage does
not move and the next poll reads again, so the stop rule never trusts a listing with a hole in it.

Requests carry `x-api-key` when a key is set (LANGSMITH_API_KEY, ASSISTANTS_EXPORTER_API_KEY or
--api-key-file; never OPENAI_API_KEY, which must not leave for another service); a local or self-hosted
server without auth needs none. `select` asks only for the fields read, so a page does not carry every run's
input (`kwargs`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from urllib.parse import quote

from exporter.flags import ConfigError, option
from exporter.model import ParseResult
from exporter.model_langgraph import (
    SOURCE_LANGGRAPH,
    LangGraphThread,
    item_key,
    parse_langgraph_run,
    read_thread,
)
from exporter.sources import DiscoveryResult, PollResult, StopRule
from exporter.sources.api import USER_AGENT
from exporter.sources.assistants import DISCOVER_THREADS_HELP
from exporter.sources.http import ApiClient, collect_into
from exporter.sources.listing import add_counts, page_by_offset, read_runs
from exporter.sources.spec import Built, CheckContext, SourceContext, SourceSpec

logger = logging.getLogger(__name__)

LIST_RUNS = "list_runs"  # api_requests_total{endpoint}
SEARCH_THREADS = "search_threads"
RUN_FIELDS: tuple[str, ...] = ("run_id", "thread_id", "assistant_id", "status", "created_at", "updated_at")
THREAD_FIELDS: tuple[str, ...] = ("thread_id", "created_at", "updated_at")
OVERLAP = 10  # items each page re-reads of the one before, to line pages up (see the module docstring)
SEARCH_LIMIT = 100
MAX_SEARCH_PAGES = 1000
SETTLE = 30  # seconds: a thread changed this long before the newest change seen may still show up late


def _parse_run(item: object, scope: str) -> ParseResult:
    return parse_langgraph_run(item, scope)


class LangGraphSource(ApiClient):
    """Lists the runs of one thread at a time, newest first, by offset, for the tracker."""

    name = SOURCE_LANGGRAPH
    beta = ""  # no OpenAI-Beta header
    list_endpoint = LIST_RUNS
    scope_kind = "thread"
    parse_item = staticmethod(_parse_run)

    def request_headers(self) -> dict[str, str]:
        """LangGraph's: the key (if any) as x-api-key; none of the OpenAI headers."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._settings.api_key:
            headers["x-api-key"] = self._settings.api_key
        return headers

    async def list_items(self, scope: str, stop: StopRule, result: PollResult) -> None:
        """One thread's runs by offset pages (see page_by_offset)."""
        url = f"{self._settings.base_url.rstrip('/')}/threads/{quote(scope, safe='')}/runs"

        async def fetch(offset: int, limit: int) -> bytes | None:
            params: dict[str, str | tuple[str, ...]] = {"limit": str(limit), "offset": str(offset),
                                                         "select": RUN_FIELDS}
            return await self.poll_page(result, url, params, f"thread {scope!r}", LIST_RUNS)

        listed = await page_by_offset(fetch, read_runs(self.parse_item, scope), partial(item_key, key="run_id"),
                                      collect_into(result, stop), limit=self._settings.page_limit,
                                      overlap=OVERLAP, max_pages=self._settings.max_pages)
        self.listing_ended(result, listed, "thread", scope)
        if listed.stopped == "shifted":
            result.outcome = "error"
            result.error = f"the run listing moved by more than {OVERLAP} runs between two pages"


class LangGraphDiscovery:
    """Finds threads with `POST /threads/search`, most recently changed first, down to the lookback or (once a
    pass has finished) to the newest change the last finished pass saw, less SETTLE."""

    name = SOURCE_LANGGRAPH

    def __init__(self, source: LangGraphSource, lookback: float, clock: Callable[[], float] = time.time,
                 limit: int = SEARCH_LIMIT) -> None:
        self.source = source
        self.limit = limit
        self.lookback = lookback
        self.clock = clock
        # The newest updated_at (the server's clock) the last finished pass read; None until one finished.
        self.settled: int | None = None

    async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult:
        result = DiscoveryResult()
        floor = self.clock() - self.lookback
        if self.settled is not None:
            floor = max(floor, self.settled - SETTLE)
        newest: list[int] = []
        reached: list[bool] = []

        async def fetch(offset: int, limit: int) -> bytes | None:
            body = json.dumps({"limit": limit, "offset": offset, "sort_by": "updated_at", "sort_order": "desc",
                               "select": list(THREAD_FIELDS)}).encode()
            page = await self.source.post_page("/threads/search", body, SEARCH_THREADS)
            result.api_reached = result.api_reached or self.source.last_reached
            return page

        def on_page(threads: list[LangGraphThread]) -> bool:
            for thread in threads:
                if thread.updated_at < floor:
                    reached.append(True)
                    return True
                newest.append(thread.updated_at)
                result.active[thread.id] = thread.updated_at
                if not is_known(thread.id):
                    result.scopes.append((thread.id, thread.created_at))
            return False

        listed = await page_by_offset(fetch, read_thread, partial(item_key, key="thread_id"), on_page,
                                      limit=self.limit, overlap=OVERLAP, max_pages=MAX_SEARCH_PAGES)
        add_counts(result.invalid, listed.invalid)
        if not (reached or listed.stopped == "end"):
            result.error = f"thread discovery stopped early ({listed.stopped})"
        elif listed.invalid:
            # A thread it could not read may be one it never sees again (a pass stops at what the last one
            # read): the pass does not count as finished, so the next reads the same window again and, once it
            # reads the thread, finds it born watched.
            result.error = f"thread discovery read {sum(listed.invalid.values())} invalid threads"
        elif newest:
            self.settled = max(newest)
        return result


@dataclass(frozen=True, slots=True)
class LangGraphOptions:
    # The same flag as the threads source's: one flag, read by whichever of the two runs.
    discover_threads: bool = option("--discover-threads", "bool", False, DISCOVER_THREADS_HELP)


def _check(ctx: CheckContext) -> None:
    if not (ctx.demo or ctx.has_scopes or ctx.options.discover_threads):
        raise ConfigError("--source langgraph needs --thread, --threads-file or --discover-threads "
                          "(or run with --demo)")


def _build(ctx: SourceContext) -> Built:
    source = ctx.client(LangGraphSource)
    found = (LangGraphDiscovery(source, ctx.lookback),) if ctx.options.discover_threads else ()
    return Built(listing=source, discoveries=found)


def _demo_options(options: LangGraphOptions) -> LangGraphOptions:
    """The demo discovers the threads the simulator's workload opens."""
    return replace(options, discover_threads=True)


# A LangSmith key: OPENAI_API_KEY is never read for this source (LangGraph deployments often have one in their
# environment, and it must not be sent to another service).
SPEC = SourceSpec(SOURCE_LANGGRAPH, "poll LangGraph Agent Server threads", "open", LangGraphOptions, _check,
                  _build, key_env=("ASSISTANTS_EXPORTER_API_KEY", "LANGSMITH_API_KEY"), own_api=True,
                  names_threads=True, demo_flavor="langgraph", demo_options=_demo_options)
