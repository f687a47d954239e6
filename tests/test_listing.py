"""The list envelope parser and the pager every listing and discovery uses (exporter/sources/listing.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from exporter.model import parse_run
from exporter.sources.foundry import read_thread
from exporter.sources.listing import Listed, ListPage, page_through, parse_list, read_runs


def read_int(obj: object) -> tuple[int | None, str | None]:
    """A toy item reader: integers are items, anything else is `wrong_type`."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj, None
    return None, "wrong_type"


def read_id(obj: object) -> tuple[str | None, str | None]:
    """A toy item reader: objects' ids are items."""
    return (str(obj.get("id")), None) if isinstance(obj, dict) else (None, "not_object")


def body(data: Any, **envelope: Any) -> bytes:
    return json.dumps({"object": "list", "data": data, **envelope}).encode()


class Pages:
    """Serves fixed bodies in order (None: a failed request), recording the cursor of each request."""

    def __init__(self, *bodies: bytes | None) -> None:
        self.bodies = list(bodies)
        self.afters: list[str | None] = []

    async def fetch(self, after: str | None) -> bytes | None:
        self.afters.append(after)
        return self.bodies.pop(0) if self.bodies else None


def page_all(pages: Pages, stop_after: int | None = None, max_pages: int = 10,
             follow_last_id: bool = False) -> tuple[Listed, list[int]]:
    seen: list[int] = []

    def on_page(items: list[int]) -> bool:
        seen.extend(items)
        return stop_after is not None and len(seen) >= stop_after

    listed = asyncio.run(page_through(pages.fetch, read_int, on_page, max_pages=max_pages,
                                      follow_last_id=follow_last_id))
    return listed, seen


# ----- parse_list ----------------------------------------------------------------------------------------


def test_a_bad_item_between_good_ones_costs_only_itself() -> None:
    page = parse_list(body([1, "two", 3, None, 5], has_more=False), read_int)
    assert page == ListPage([1, 3, 5], {"wrong_type": 2}, None)


def test_a_run_with_an_unknown_status_is_kept_and_counted() -> None:
    run = {"id": "run_1", "status": "paused", "created_at": 1}
    page = parse_list(body([run, {"status": "queued"}], has_more=False), read_runs(parse_run, "thread_1"))
    assert page is not None and [r.id for r in page.items] == ["run_1"]
    assert page.invalid == {"unknown_status": 1, "missing_id": 1}


def test_a_reader_that_raises_costs_only_its_item(caplog: pytest.LogCaptureFixture) -> None:
    def fragile(obj: object) -> tuple[int | None, str | None]:
        if obj == 2:
            raise RecursionError("a reader bug")
        return read_int(obj)

    page = parse_list(body([1, 2, 3, 2], has_more=False), fragile)
    assert page == ListPage([1, 3], {"wrong_type": 2}, None)
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1  # logged once per page


MALFORMED = {
    "empty": b"",
    "not json": b"<html>502</html>",
    "truncated": b'{"data": [1, 2',
    "invalid utf-8": b'{"data": [1], "x": "\xff\xfe"}',
    "a list": b"[1, 2]",
    "no data": b'{"object": "list", "has_more": false}',
    "data not a list": b'{"data": {"id": 1}}',
    "has_more not a bool": body([1], has_more="yes", last_id="c"),
    "has_more without a cursor": body([], has_more=True),
    "has_more after an item without an id": body([1], has_more=True),
    "has_more with a numeric last_id": body([1], has_more=True, last_id=12),
    "has_more with an empty last_id": body([1], has_more=True, last_id=""),
    "has_more with a lone surrogate last_id": body([1], has_more=True, last_id="c\ud800"),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting in data": b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "a 5000-digit number": b'{"data": [' + b"9" * 5000 + b"]}",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_pages_are_none(raw: bytes) -> None:
    assert parse_list(raw, read_int) is None
    assert parse_list(raw, read_int, follow_last_id=True) is None


def test_values_nested_deep_inside_an_item_leave_the_page_whole() -> None:
    deep = b'{"data": [1, {"x": ' + b"[" * 500 + b"]" * 500 + b"}, 3], \"has_more\": false}"
    assert parse_list(deep, read_int) == ListPage([1, 3], {"wrong_type": 1}, None)


@pytest.mark.parametrize(
    ("envelope", "cursor", "followed"),
    [
        ({"has_more": False, "last_id": "c"}, None, None),  # OpenAI's last page names its last item
        ({"has_more": True, "last_id": "c"}, "c", "c"),
        ({"has_more": True, "last_id": None}, "i9", "i9"),  # no last_id: after the last item, as the SDK does
        ({"has_more": True}, "i9", "i9"),
        ({"last_id": "c"}, None, "c"),  # has_more not said: the end, or Foundry's rule (follow last_id)
        ({"has_more": None, "last_id": "c"}, None, "c"),
        ({"last_id": None}, None, None),
        ({"last_id": 12}, None, None),
    ],
)
def test_the_next_cursor(envelope: dict[str, Any], cursor: str | None, followed: str | None) -> None:
    raw = body([{"id": "i8"}, {"id": "i9"}], **envelope)
    assert parse_list(raw, read_id) == ListPage(["i8", "i9"], {}, cursor)
    assert parse_list(raw, read_id, follow_last_id=True) == ListPage(["i8", "i9"], {}, followed)


def test_foundry_threads_page_without_has_more_follows_last_id() -> None:
    page = parse_list(json.dumps({"data": [{"id": "thread_a", "created_at": 5}], "last_id": "thread_a"}).encode(),
                      read_thread, follow_last_id=True)
    assert page is not None and page.cursor == "thread_a"


# ----- page_through --------------------------------------------------------------------------------------


def test_follows_cursors_to_the_end() -> None:
    pages = Pages(body([1, 2], has_more=True, last_id="c2"), body([3], has_more=True, last_id="c3"),
                  body([4], has_more=False, last_id="c4"))
    listed, seen = page_all(pages)
    assert (listed.stopped, listed.requests, listed.invalid) == ("end", 3, {})
    assert seen == [1, 2, 3, 4] and pages.afters == [None, "c2", "c3"]


def test_has_more_without_last_id_pages_after_the_last_item() -> None:
    ids = [{"id": "a"}, {"id": "b"}]
    pages = Pages(body(ids, has_more=True), body([{"id": "c"}], has_more=False))
    got: list[str] = []

    def on_page(items: list[str]) -> bool:
        got.extend(items)
        return False

    listed = asyncio.run(page_through(pages.fetch, read_id, on_page, max_pages=5))
    assert (listed.stopped, listed.requests) == ("end", 2)
    assert got == ["a", "b", "c"] and pages.afters == [None, "b"]


def test_has_more_without_any_cursor_is_a_counted_malformed_page() -> None:
    pages = Pages(body([1], has_more=True, last_id="c1"), body([2], has_more=True))
    listed, seen = page_all(pages)
    assert (listed.stopped, listed.requests, listed.invalid) == ("malformed", 2, {"malformed_page": 1})
    assert seen == [1]  # the first page's items stay


def test_a_repeated_cursor_stops_paging_and_is_counted() -> None:
    pages = Pages(*[body([1], has_more=True, last_id="same")] * 5)
    listed, seen = page_all(pages)
    assert (listed.stopped, listed.requests, listed.invalid) == ("loop", 2, {"malformed_page": 1})
    assert seen == [1]  # the repeated page is dropped as a whole
    assert pages.afters == [None, "same"]


def test_a_cursor_from_an_earlier_page_is_a_loop_too() -> None:
    pages = Pages(body([1], has_more=True, last_id="a"), body([2], has_more=True, last_id="b"),
                  body([3], has_more=True, last_id="a"))
    listed, seen = page_all(pages)
    assert (listed.stopped, listed.requests, listed.invalid, seen) == ("loop", 3, {"malformed_page": 1}, [1, 2])


def test_malformed_page_keeps_earlier_pages_and_counts_their_bad_items() -> None:
    pages = Pages(body([1, "x"], has_more=True, last_id="c1"), b'{"data": [' + b"[" * 100_000)
    listed, seen = page_all(pages)
    assert (listed.stopped, listed.invalid, seen) == ("malformed", {"wrong_type": 1, "malformed_page": 1}, [1])


def test_a_failed_request_stops_uncounted() -> None:
    pages = Pages(body([1], has_more=True, last_id="c1"), None)
    listed, seen = page_all(pages)
    assert (listed.stopped, listed.requests, listed.invalid, seen) == ("error", 2, {}, [1])


def test_the_hook_stops_paging_but_the_end_of_the_list_wins() -> None:
    pages = Pages(body([1, 2], has_more=True, last_id="c2"), body([3], has_more=True, last_id="c3"))
    listed, seen = page_all(pages, stop_after=2)
    assert (listed.stopped, listed.requests, seen) == ("hook", 1, [1, 2])
    last = Pages(body([1, 2], has_more=False))
    assert page_all(last, stop_after=2)[0].stopped == "end"  # the whole list was read


def test_max_pages_bounds_an_endless_list() -> None:
    pages = Pages(*[body([i], has_more=True, last_id=f"c{i}") for i in range(10)])
    listed, seen = page_all(pages, max_pages=3)
    assert (listed.stopped, listed.requests, seen) == ("max_pages", 3, [0, 1, 2])


def test_follow_last_id_pages_on_when_has_more_is_not_said() -> None:
    two = (body([1], last_id="c1"), body([2], last_id=None))
    assert page_all(Pages(*two))[0].requests == 1
    listed, seen = page_all(Pages(*two), follow_last_id=True)
    assert (listed.stopped, listed.requests, seen) == ("end", 2, [1, 2])
