"""Azure AI Foundry classic agents: thread discovery, independent of how the HTTP requests are made.

Foundry lists threads with `GET {endpoint}/threads?order=desc&limit=100&after=ID`, in the envelope
`{data, last_id, has_more}` (no `object`, no `first_id`; `last_id` is null on the last page). The caller
supplies `fetch_page`, so auth, rate limits, retries and request metrics stay in the HTTP layer.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from exporter.model import (
    REASON_MALFORMED_PAGE,
    REASON_MISSING_ID,
    REASON_NOT_OBJECT,
    REASON_WRONG_TYPE,
    SOURCE_THREADS,
    string_problem,
    thread_id_problem,
)
from exporter.sources import DiscoveryResult
from exporter.sources.assistants import AssistantsSource

PAGE_LIMIT = 100
MAX_PAGES = 1000  # 100,000 threads in one pass; a server whose cursors never end cannot keep us busy forever

# Given the query parameters of one listing request, the response body, or None when the request failed.
FetchPage = Callable[[dict[str, str]], Awaitable[bytes | None]]
IsKnown = Callable[[str], bool]
LIST_THREADS = "list_threads"  # api_requests_total{endpoint}
StopReason = Literal["since", "known", "end", "error", "malformed", "loop", "max_pages"]


@dataclass(frozen=True, slots=True)
class ThreadItem:
    id: str
    created_at: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class ThreadsPage:
    """One parsed listing page. `malformed` pages carry nothing else; the pass stops there."""

    threads: list[ThreadItem] = field(default_factory=list)
    last_id: str | None = None
    has_more: bool | None = None  # None when the page did not say
    invalid: dict[str, int] = field(default_factory=dict)  # invalid_objects_total reason -> count
    malformed: bool = False

    @property
    def next_cursor(self) -> str | None:
        """Where the next page starts, or None at the end: Foundry nulls last_id on the last page."""
        return None if self.has_more is False else self.last_id


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
    created_at = obj.get("created_at")
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        return REASON_WRONG_TYPE
    return ThreadItem(thread_id, int(created_at))


def parse_threads_page(body: bytes) -> ThreadsPage:
    """Parse a threads listing page. Never raises: bad items are counted, a bad page is `malformed`."""
    try:
        page: Any = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, bad UTF-8, absurdly nested
        page = None
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        return ThreadsPage(invalid={REASON_MALFORMED_PAGE: 1}, malformed=True)
    threads: list[ThreadItem] = []
    invalid: Counter[str] = Counter()
    for item in page["data"]:
        parsed = parse_thread(item)
        if isinstance(parsed, str):
            invalid[parsed] += 1
        else:
            threads.append(parsed)
    last_id = page.get("last_id")
    has_more = page.get("has_more")
    return ThreadsPage(
        threads=threads,
        last_id=last_id if isinstance(last_id, str) and last_id and string_problem(last_id) is None else None,
        has_more=has_more if isinstance(has_more, bool) else None,
        invalid=dict(invalid),
    )


async def discover_threads(
    fetch_page: FetchPage,
    is_known: IsKnown,
    since: float,
    *,
    stop_at_known: bool = True,
    stop_known_before: float | None = None,
    max_pages: int = MAX_PAGES,
) -> Discovered:
    """List threads newest first and return the unknown ones created at or after `since`.

    The pass stops at the first thread created before `since`, or (with `stop_at_known`) at the first known
    thread: everything older was seen by an earlier pass. That holds only after a pass has finished, so a
    caller whose last pass did not finish passes `stop_at_known=False` and walks down to `since` again.
    `stop_known_before`: stop only at a known thread created before this time; newer known ones are skipped,
    since a thread created in the same second as a known one may sort after it.
    """
    found: list[ThreadItem] = []
    seen: set[str] = set()
    invalid: Counter[str] = Counter()
    cursors: set[str] = set()
    params = {"order": "desc", "limit": str(PAGE_LIMIT)}
    requests = 0

    def result(finished: bool, stopped: StopReason) -> Discovered:
        return Discovered(found, requests, finished, stopped, dict(invalid))

    while requests < max_pages:
        body = await fetch_page(dict(params))
        requests += 1
        if body is None:
            return result(False, "error")
        page = parse_threads_page(body)
        invalid.update(page.invalid)
        if page.malformed:
            return result(False, "malformed")
        for thread in page.threads:
            if thread.created_at < since:
                return result(True, "since")
            if is_known(thread.id):
                if stop_at_known and (stop_known_before is None or thread.created_at < stop_known_before):
                    return result(True, "known")
                continue
            if thread.id not in seen:
                seen.add(thread.id)
                found.append(thread)
        cursor = page.next_cursor
        if cursor is None:
            return result(True, "end")
        if cursor in cursors:  # the server sent a cursor twice: it would loop forever
            return result(False, "loop")
        cursors.add(cursor)
        params["after"] = cursor
    return result(False, "max_pages")


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
