"""Azure AI Foundry classic agents: thread discovery, independent of how the HTTP requests are made.

Foundry lists threads with `GET {endpoint}/threads?order=desc&limit=100&after=ID`, in the envelope
`{data, last_id, has_more}` (no `object`, no `first_id`; `last_id` is null on the last page). The caller
supplies `fetch_page`, so auth, rate limits, retries and request metrics stay in the HTTP layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from exporter.model import (
    REASON_MISSING_ID,
    REASON_NOT_OBJECT,
    REASON_WRONG_TYPE,
    SOURCE_THREADS,
    json_int,
    string_problem,
    thread_id_problem,
)
from exporter.sources import DiscoveryResult
from exporter.sources.assistants import AssistantsSource
from exporter.sources.listing import ListPage, ReadItem, page_through, parse_list

PAGE_LIMIT = 100
MAX_PAGES = 1000  # 100,000 threads in one pass; a server whose cursors never end cannot keep us busy forever

# Given the query parameters of one listing request, the response body, or None when the request failed.
FetchPage = Callable[[dict[str, str]], Awaitable[bytes | None]]
IsKnown = Callable[[str], bool]
LIST_THREADS = "list_threads"  # api_requests_total{endpoint}
StopReason = Literal["since", "known", "end", "error", "malformed", "loop", "max_pages", "shifted"]


@dataclass(frozen=True, slots=True)
class ThreadItem:
    id: str
    created_at: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class Discovered:
    """The result of one discovery pass."""

    threads: list[ThreadItem]  # new threads, newest first
    requests: int  # listing requests made (each one, failed or not)
    finished: bool  # reached `since`, a known thread or the end of the list; False: try again next time
    stopped: StopReason
    invalid: dict[str, int] = field(default_factory=dict)


def parse_thread(obj: object) -> ThreadItem | str:
    """A thread item, or the invalid-object reason it is skipped for."""
    if not isinstance(obj, dict):
        return REASON_NOT_OBJECT
    thread_id = obj.get("id")
    if thread_id is None:
        return REASON_MISSING_ID
    if not isinstance(thread_id, str) or thread_id_problem(thread_id) is not None:
        # It goes into a URL path, so a bad id must not be used.
        return (string_problem(thread_id) if isinstance(thread_id, str) else None) or REASON_WRONG_TYPE
    created_at = json_int(obj.get("created_at"))  # NaN, Infinity and 400-digit numbers are the wrong type
    return REASON_WRONG_TYPE if created_at is None else ThreadItem(thread_id, created_at)


def read_thread(obj: object) -> tuple[ThreadItem | None, str | None]:
    """parse_thread as a list item reader."""
    parsed = parse_thread(obj)
    return (None, parsed) if isinstance(parsed, str) else (parsed, None)


def parse_threads_page(body: bytes) -> ListPage[ThreadItem] | None:
    """One threads listing page; None when it is malformed. Without `has_more` it goes on after `last_id`."""
    return parse_list(body, read_thread, follow_last_id=True)


async def discover_threads(
    fetch_page: FetchPage,
    is_known: IsKnown,
    since: float,
    *,
    stop_at_known: bool = True,
    stop_known_before: float | None = None,
    max_pages: int = MAX_PAGES,
    read_item: ReadItem[ThreadItem] = read_thread,
) -> Discovered:
    """List threads newest first and return the unknown ones created at or after `since`.

    The pass stops at the first thread created before `since`, or (with `stop_at_known`) at the first known
    thread: everything older was seen by an earlier pass. That holds only after a pass has finished, so a
    caller whose last pass did not finish passes `stop_at_known=False` and walks down to `since` again.
    `stop_known_before`: stop only at a known thread created before this time; newer known ones are skipped,
    since a thread created in the same second as a known one may sort after it.
    `read_item`: how one item of the list is read (sessions are read as threads; responses are not).
    """
    found: list[ThreadItem] = []
    seen: set[str] = set()
    reached: list[StopReason] = []  # "since" or "known", once an item says the rest is older or known

    def on_page(threads: list[ThreadItem]) -> bool:
        for thread in threads:
            if thread.created_at < since:
                reached.append("since")
                return True
            if is_known(thread.id):
                if stop_at_known and (stop_known_before is None or thread.created_at < stop_known_before):
                    reached.append("known")
                    return True
                continue
            if thread.id not in seen:
                seen.add(thread.id)
                found.append(thread)
        return False

    async def fetch(after: str | None) -> bytes | None:
        params = {"order": "desc", "limit": str(PAGE_LIMIT)}
        if after is not None:
            params["after"] = after
        return await fetch_page(params)

    listed = await page_through(fetch, read_item, on_page, max_pages=max_pages, follow_last_id=True)
    stopped: StopReason = reached[0] if reached else "end" if listed.stopped == "hook" else listed.stopped
    finished = stopped in ("since", "known", "end")
    return Discovered(found, listed.requests, finished, stopped, listed.invalid)


class ThreadDiscovery:
    """Discovery of threads for the `threads` source: `GET {api-base}/threads`, newest first, each pass down
    to the lookback or (once a pass has finished) to the first thread already known."""

    name = SOURCE_THREADS

    def __init__(self, source: AssistantsSource, lookback: float, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.lookback = lookback
        self.clock = clock
        # Until a pass finishes, stopping at a known thread could skip older ones. After one, a pass stops at
        # the first known thread created before the last finished pass began (with a second's margin:
        # created_at is whole seconds): everything older was listed then.
        self.settled_before: float | None = None

    async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult:
        async def fetch_page(params: dict[str, str]) -> bytes | None:
            return await self.source.get_page("/threads", params, LIST_THREADS)

        started = self.clock()
        found = await discover_threads(fetch_page, is_known, started - self.lookback,
                                       stop_at_known=self.settled_before is not None,
                                       stop_known_before=self.settled_before)
        if found.finished:
            self.settled_before = math.floor(started) - 1
        error = None if found.finished else f"thread discovery stopped early ({found.stopped})"
        return DiscoveryResult([(t.id, t.created_at) for t in found.threads], self.source.last_reached, error,
                               found.invalid)
