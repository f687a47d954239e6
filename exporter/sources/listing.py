"""The OpenAI list envelope, parsed in one place and paged in one place, for every listing and discovery.

A page is `{object: "list", data, first_id, last_id, has_more}`; Foundry leaves out `object` and `first_id`
and nulls `last_id` on the last page. `parse_list` reads one page with the caller's item reader (runs, turns,
threads, sessions, responses); `page_through` follows `after` cursors until the end of the list, the caller's
stop hook, a repeated cursor or the page limit. Neither raises on anything a server sends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from exporter.model import REASON_MALFORMED_PAGE, REASON_WRONG_TYPE, ParseResult, RunSnapshot, string_problem

logger = logging.getLogger(__name__)

T = TypeVar("T")

# One list item -> what it became (or None) and its invalid-object reason (or None). Both at once: a run with
# an unrecognized status is kept as `unknown` and counted.
ReadItem = Callable[[object], tuple[T | None, str | None]]
# A run-shaped item and the scope listed -> a snapshot and/or a reason (model.parse_run, model.parse_turn).
ParseItem = Callable[[object, str], ParseResult]
# Given the cursor to list after (None: the first page), the body of the answer, or None when the request failed.
FetchPage = Callable[[str | None], Awaitable[bytes | None]]
# Given the items of one page, in order, True when paging may stop.
OnPage = Callable[[list[T]], bool]
# Why page_through stopped: the list ended, the hook said so, a request failed, a page was malformed, a cursor
# came back a second time, or max_pages were read; page_by_offset: or the list moved by more than its overlap.
StopReason = Literal["end", "hook", "error", "malformed", "loop", "max_pages", "shifted"]


@dataclass(frozen=True, slots=True)
class ListPage(Generic[T]):
    """One well-formed page: the items read, the rejected ones by reason, and where the next page starts."""

    items: list[T]
    invalid: dict[str, int]
    cursor: str | None  # None on the last page


@dataclass(slots=True)
class Listed:
    """The outcome of paging through one list."""

    stopped: StopReason
    requests: int  # pages asked for, failed ones included
    invalid: dict[str, int] = field(default_factory=dict)  # invalid_objects_total reason -> count


def read_runs(parse_item: ParseItem, scope: str) -> ReadItem[RunSnapshot]:
    """The item reader of a run-shaped listing (runs, turns) of one scope."""

    def read(item: object) -> tuple[RunSnapshot | None, str | None]:
        parsed = parse_item(item, scope)
        return parsed.snapshot, parsed.invalid_reason

    return read


def add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for reason, count in more.items():
        into[reason] = into.get(reason, 0) + count


def parse_list(body: bytes, read_item: ReadItem[T], *, follow_last_id: bool = False) -> ListPage[T] | None:
    """One page, or None when it is malformed as a whole (not JSON, no `data` list, a `has_more` that is not a
    boolean, or more pages without a usable cursor). `follow_last_id`: a page that does not say `has_more`
    continues after its `last_id` (the official pager's rule) instead of ending the list."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, truncated, bad UTF-8, a 5000-digit number, absurdly nested
        return None
    if not isinstance(obj, dict):
        return None
    data = obj.get("data")
    if not isinstance(data, list):
        return None
    well_formed, cursor = _next_cursor(obj, data, follow_last_id)
    if not well_formed:
        return None
    items, invalid = _read_items(data, read_item)
    return ListPage(items, invalid, cursor)


def _next_cursor(obj: dict[str, object], data: list[object], follow_last_id: bool) -> tuple[bool, str | None]:
    """(whether the envelope is well formed, where the next page starts or None at the end)."""
    has_more = obj.get("has_more")
    last_id = obj.get("last_id")
    if has_more is None:  # some compatible servers say nothing on the last page
        return True, _usable(last_id) if follow_last_id else None
    if not isinstance(has_more, bool):
        return False, None
    if not has_more:
        return True, None
    if last_id is None and data and isinstance(data[-1], dict):
        last_id = data[-1].get("id")  # a cursor page may leave it out: the SDK pages after the last item
    cursor = _usable(last_id)
    return cursor is not None, cursor  # more pages that we could not ask for: malformed


def _usable(cursor: object) -> str | None:
    """The cursor when it can go into a query string (a lone surrogate cannot), else None."""
    return cursor if isinstance(cursor, str) and cursor and string_problem(cursor) is None else None


def _read_items(data: list[object], read_item: ReadItem[T]) -> tuple[list[T], dict[str, int]]:
    """Every item read on its own, so a bad one never costs its neighbours."""
    items: list[T] = []
    invalid: dict[str, int] = {}
    failed = False
    for raw in data:
        try:
            item, reason = read_item(raw)
        except Exception:  # readers never raise; if one does, it costs this item only
            if not failed:
                logger.exception("a list item could not be read; counted as %s", REASON_WRONG_TYPE)
            failed = True
            item, reason = None, REASON_WRONG_TYPE
        if reason is not None:
            invalid[reason] = invalid.get(reason, 0) + 1
        if item is not None:
            items.append(item)
    return items, invalid


async def page_through(
    fetch: FetchPage,
    read_item: ReadItem[T],
    on_page: OnPage[T],
    *,
    max_pages: int,
    follow_last_id: bool = False,
) -> Listed:
    """Fetch pages newest first, following `after` cursors, handing each page's items to `on_page`.

    Stops at the end of the list (even if `on_page` also said stop), when `on_page` returns True, when a
    request fails, at a malformed page or a cursor seen before (both counted as malformed_page, the page
    dropped), or after `max_pages` requests. Never raises unless `fetch` or `on_page` does."""
    listed = Listed("max_pages", 0)
    sent: set[str] = set()
    after: str | None = None
    while listed.requests < max_pages:
        body = await fetch(after)
        listed.requests += 1
        if body is None:
            listed.stopped = "error"
            return listed
        page = parse_list(body, read_item, follow_last_id=follow_last_id)
        if page is None or page.cursor in sent:  # a cursor asked for before: the server would loop us forever
            listed.invalid[REASON_MALFORMED_PAGE] = listed.invalid.get(REASON_MALFORMED_PAGE, 0) + 1
            listed.stopped = "malformed" if page is None else "loop"
            return listed
        add_counts(listed.invalid, page.invalid)
        stop = on_page(page.items)
        if page.cursor is None:
            listed.stopped = "end"
            return listed
        if stop:
            listed.stopped = "hook"
            return listed
        sent.add(page.cursor)
        after = page.cursor
    return listed


# Given (offset, limit), the body of the answer, or None when the request failed.
FetchAt = Callable[[int, int], Awaitable[bytes | None]]
# A raw list item -> its id, to line pages up by (None: it has none).
ItemKey = Callable[[object], str | None]


def parse_array(body: bytes) -> list[object] | None:
    """A page that is a bare JSON array (LangGraph's listings), or None when it is not one."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, list) else None


def _continuation(raw: list[object], key: ItemKey, anchors: list[str]) -> int | None:
    """Where the new items of a page read with an overlap begin: just after the newest of the previous page's
    last items (`anchors`, oldest first) that it holds; None when it holds none of them."""
    keys = [key(item) for item in raw]
    for anchor in reversed(anchors):
        if anchor in keys:
            return len(keys) - keys[::-1].index(anchor)
    return None


async def page_by_offset(
    fetch: FetchAt,
    read_item: ReadItem[T],
    key: ItemKey,
    on_page: OnPage[T],
    *,
    limit: int,
    overlap: int,
    max_pages: int,
) -> Listed:
    """Fetch pages of an offset-paged list (newest first) of `limit` items, each one starting `overlap` items
    before where the last one ended, and hand the items not read before to `on_page`.

    Offsets move when the list changes under the pager: an item added before the read position pushes the
    rest down (read twice: the overlap and the ids drop them), an item removed pulls them up (one would be
    skipped). So a page must hold one of the previous page's last `overlap` items; its items after the
    newest such one are the next ones, exactly. A page that holds none (more than `overlap` items moved
    between two requests) stops the pager as "shifted": the caller knows the list was not read whole.
    The list ends at a page shorter than `limit`. Never raises unless `fetch` or `on_page` does."""
    listed = Listed("max_pages", 0)
    limit = max(2, limit)
    overlap = max(1, min(overlap, limit // 2))  # each page moves on by at least half a page
    offset = 0  # where the next unread item is, as far as the last page showed
    anchors: list[str] = []
    seen: set[str] = set()
    while listed.requests < max_pages:
        start = max(0, offset - overlap) if listed.requests else 0
        body = await fetch(start, limit)
        listed.requests += 1
        if body is None:
            listed.stopped = "error"
            return listed
        raw = parse_array(body)
        if raw is None:
            listed.invalid[REASON_MALFORMED_PAGE] = listed.invalid.get(REASON_MALFORMED_PAGE, 0) + 1
            listed.stopped = "malformed"
            return listed
        begin = 0 if listed.requests == 1 else _continuation(raw, key, anchors)
        if begin is None:
            listed.stopped = "shifted"
            return listed
        fresh = [item for item in raw[begin:] if (k := key(item)) is None or k not in seen]
        items, invalid = _read_items(fresh, read_item)
        add_counts(listed.invalid, invalid)
        seen.update(k for item in fresh if (k := key(item)) is not None)
        stop = on_page(items)
        if len(raw) < limit:
            listed.stopped = "end"
            return listed
        if stop:
            listed.stopped = "hook"
            return listed
        anchors = [k for item in raw[-overlap:] if (k := key(item)) is not None]
        offset = start + len(raw)
    return listed
