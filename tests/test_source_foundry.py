"""Foundry thread discovery: the page parser and the paging rules, with a fake fetch and against the simulator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from exporter.simulator import FakeClock, Simulator
from exporter.sources.foundry import (
    Discovered,
    ThreadItem,
    discover_threads,
    parse_thread,
    parse_threads_page,
)


def thread(i: int, created_at: int | None = None) -> dict[str, Any]:
    return {"id": f"thread_{i:04d}", "object": "thread", "created_at": 1000 + i if created_at is None else created_at}


class FakeListing:
    """Serves threads newest first in Foundry's envelope, honouring `after`; records every request."""

    def __init__(self, items: list[dict[str, Any]], fail_at: set[int] | None = None) -> None:
        self.items = sorted(items, key=lambda t: (t["created_at"], t["id"]), reverse=True)
        self.requests: list[dict[str, str]] = []
        self.fail_at = fail_at or set()

    async def fetch(self, params: dict[str, str]) -> bytes | None:
        self.requests.append(params)
        if len(self.requests) in self.fail_at:
            return None
        assert params["order"] == "desc"
        limit = int(params["limit"])
        start = 0
        if "after" in params:
            start = next(i for i, t in enumerate(self.items) if t["id"] == params["after"]) + 1
        data = self.items[start : start + limit]
        has_more = start + limit < len(self.items)
        return json.dumps(
            {"data": data, "last_id": data[-1]["id"] if has_more else None, "has_more": has_more}
        ).encode()


def run(coro: Any) -> Discovered:
    result: Discovered = asyncio.run(coro)
    return result


def never_known(thread_id: str) -> bool:
    return False


# ----- parser --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": "thread_a", "created_at": 5}, ThreadItem("thread_a", 5)),
        ({"id": "thread_a", "created_at": 5.7}, ThreadItem("thread_a", 5)),
        ("thread_a", "not_object"),
        ({"created_at": 5}, "missing_id"),
        ({"id": 7, "created_at": 5}, "wrong_type"),
        ({"id": "", "created_at": 5}, "wrong_type"),
        ({"id": "../runs", "created_at": 5}, "wrong_type"),
        ({"id": "thread_a"}, "wrong_type"),
        ({"id": "thread_a", "created_at": "yesterday"}, "wrong_type"),
        ({"id": "thread_a", "created_at": True}, "wrong_type"),
    ],
)
def test_parse_thread(item: object, expected: ThreadItem | str) -> None:
    assert parse_thread(item) == expected


def test_a_page_keeps_good_items_and_counts_bad_ones() -> None:
    body = json.dumps(
        {"data": [thread(1), 5, {"id": "x"}, {"created_at": 1}, thread(2)], "last_id": "thread_0002", "has_more": True}
    ).encode()
    page = parse_threads_page(body)
    assert page is not None and [t.id for t in page.items] == ["thread_0001", "thread_0002"]
    assert page.invalid == {"not_object": 1, "wrong_type": 1, "missing_id": 1}
    assert page.cursor == "thread_0002"


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"data": [', b"[]", b'{"data": {}}', b'{"last_id": null}', b"\xff\xfe"],
)
def test_malformed_pages(body: bytes) -> None:
    assert parse_threads_page(body) is None


@pytest.mark.parametrize(
    ("envelope", "cursor"),
    [
        ({"last_id": None, "has_more": False}, None),  # Foundry's last page
        ({"last_id": "t", "has_more": False}, None),  # OpenAI's last page names its last item
        ({"last_id": "t", "has_more": True}, "t"),
        ({"last_id": "t"}, "t"),  # no has_more: follow last_id, as the official pager does
        ({"last_id": 5}, None),  # no has_more and no usable last_id: the end
        ({"last_id": None, "has_more": None}, None),
    ],
)
def test_next_cursor(envelope: dict[str, Any], cursor: str | None) -> None:
    page = parse_threads_page(json.dumps({"data": [], **envelope}).encode())
    assert page is not None and page.cursor == cursor


@pytest.mark.parametrize(
    "envelope",
    [
        {"last_id": 5, "has_more": True},
        {"last_id": "", "has_more": True},
        {"last_id": None, "has_more": True},  # and no item to page after
        {"last_id": "t", "has_more": "yes"},
    ],
)
def test_more_pages_without_a_cursor_are_malformed(envelope: dict[str, Any]) -> None:
    assert parse_threads_page(json.dumps({"data": [], **envelope}).encode()) is None


# ----- paging rules --------------------------------------------------------------------------------


def test_first_pass_lists_everything_down_to_since_following_after() -> None:
    listing = FakeListing([thread(i) for i in range(250)])
    got = run(discover_threads(listing.fetch, never_known, since=1000 + 20))
    assert [t.id for t in got.threads] == [f"thread_{i:04d}" for i in range(249, 19, -1)]
    assert got.threads[0] == ThreadItem("thread_0249", 1249)
    assert (got.requests, got.finished, got.stopped) == (3, True, "since")
    assert listing.requests == [
        {"order": "desc", "limit": "100"},
        {"order": "desc", "limit": "100", "after": "thread_0150"},
        {"order": "desc", "limit": "100", "after": "thread_0050"},
    ]


def test_a_thread_created_exactly_at_since_is_included() -> None:
    listing = FakeListing([thread(i) for i in range(5)])
    got = run(discover_threads(listing.fetch, never_known, since=1002))
    assert [t.id for t in got.threads] == ["thread_0004", "thread_0003", "thread_0002"]


def test_steady_state_stops_at_the_first_known_thread_in_one_request() -> None:
    listing = FakeListing([thread(i) for i in range(300)])
    known = {f"thread_{i:04d}" for i in range(295)}
    got = run(discover_threads(listing.fetch, known.__contains__, since=0))
    assert [t.id for t in got.threads] == [f"thread_{i:04d}" for i in (299, 298, 297, 296, 295)]
    assert (got.requests, got.finished, got.stopped) == (1, True, "known")


def test_without_stop_at_known_a_pass_walks_past_known_threads_down_to_since() -> None:
    listing = FakeListing([thread(i) for i in range(250)])
    known = {"thread_0249", "thread_0120"}
    got = run(discover_threads(listing.fetch, known.__contains__, since=1100, stop_at_known=False))
    assert len(got.threads) == 148 and not known & {t.id for t in got.threads}
    assert (got.requests, got.finished, got.stopped) == (2, True, "since")


def test_the_end_of_the_list_finishes_a_pass() -> None:
    listing = FakeListing([thread(i) for i in range(100)])  # exactly one full page: last_id null
    got = run(discover_threads(listing.fetch, never_known, since=0))
    assert (len(got.threads), got.requests, got.finished, got.stopped) == (100, 1, True, "end")
    empty = run(discover_threads(FakeListing([]).fetch, never_known, since=0))
    assert (empty.threads, empty.requests, empty.finished) == ([], 1, True)


def test_a_failed_request_ends_the_pass_unfinished_keeping_what_was_found() -> None:
    listing = FakeListing([thread(i) for i in range(250)], fail_at={2})
    got = run(discover_threads(listing.fetch, never_known, since=0))
    assert len(got.threads) == 100
    assert (got.requests, got.finished, got.stopped) == (2, False, "error")


def test_a_malformed_page_ends_the_pass_unfinished_and_is_counted() -> None:
    async def fetch(params: dict[str, str]) -> bytes | None:
        return b'{"data": [{"id": "thread_a", "created_at": 5}'

    got = run(discover_threads(fetch, never_known, since=0))
    assert (got.threads, got.finished, got.stopped, got.invalid) == ([], False, "malformed", {"malformed_page": 1})


def test_malformed_items_are_skipped_and_counted_across_pages() -> None:
    pages = [
        {"data": [thread(9), "junk", {"id": "thread_x", "created_at": "?"}], "last_id": "thread_x", "has_more": True},
        {"data": [{"created_at": 3}, thread(1)], "last_id": None, "has_more": False},
    ]

    async def fetch(params: dict[str, str]) -> bytes | None:
        return json.dumps(pages[1 if "after" in params else 0]).encode()

    got = run(discover_threads(fetch, never_known, since=0))
    assert [t.id for t in got.threads] == ["thread_0009", "thread_0001"]
    assert got.invalid == {"not_object": 1, "wrong_type": 1, "missing_id": 1}
    assert got.finished


def test_a_server_repeating_a_cursor_cannot_loop_the_pass() -> None:
    async def fetch(params: dict[str, str]) -> bytes | None:
        return json.dumps({"data": [thread(1)], "last_id": "thread_0001", "has_more": True}).encode()

    got = run(discover_threads(fetch, never_known, since=0))
    assert [t.id for t in got.threads] == ["thread_0001"]  # the repeat is not reported twice
    assert (got.requests, got.finished, got.stopped) == (2, False, "loop")
    assert got.invalid == {"malformed_page": 1}  # counted like any page that cannot be followed


def test_has_more_without_last_id_pages_after_the_last_thread() -> None:
    pages = [
        {"data": [thread(9), thread(8)], "last_id": None, "has_more": True},
        {"data": [thread(7)], "last_id": None, "has_more": False},
    ]
    afters: list[str | None] = []

    async def fetch(params: dict[str, str]) -> bytes | None:
        afters.append(params.get("after"))
        return json.dumps(pages[len(afters) - 1]).encode()

    got = run(discover_threads(fetch, never_known, since=0))
    assert [t.id for t in got.threads] == ["thread_0009", "thread_0008", "thread_0007"]
    assert afters == [None, "thread_0008"] and (got.finished, got.stopped) == (True, "end")


def test_a_body_too_large_is_a_malformed_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.sources import http as http_client
    from exporter.sources.assistants import ApiSettings, AssistantsSource
    from exporter.sources.foundry import ThreadDiscovery

    monkeypatch.setattr(http_client, "MAX_BODY_BYTES", 1000)
    big = json.dumps({"data": [thread(i) for i in range(50)], "last_id": None, "has_more": False}).encode()

    async def go() -> tuple[list[tuple[str, int]], dict[str, int], str | None]:
        source = AssistantsSource(ApiSettings(base_url="http://api.test/v1", api_key="k"),
                                  transport=httpx.MockTransport(lambda r: httpx.Response(200, content=big)))
        try:
            found = await ThreadDiscovery(source, 3600.0, clock=lambda: 1000.0).discover(never_known)
        finally:
            await source.aclose()
        assert found.api_reached
        return found.scopes, found.invalid, found.error

    assert asyncio.run(go()) == ([], {"malformed_page": 1}, "thread discovery stopped early (malformed)")


def test_max_pages_bounds_a_pass() -> None:
    listing = FakeListing([thread(i) for i in range(1000)])
    got = run(discover_threads(listing.fetch, never_known, since=0, max_pages=3))
    assert (len(got.threads), got.requests, got.finished, got.stopped) == (300, 3, False, "max_pages")


# ----- against the simulator over HTTP ---------------------------------------------------------------


def test_discovery_against_the_foundry_simulator_finds_threads_created_while_it_runs() -> None:
    clock = FakeClock(start=1_760_000_000.0)
    with Simulator(scenario="discovery", seed=5, clock=clock, speed=10, flavor="foundry") as sim:
        for _ in range(150):  # old threads, before the lookback
            clock.advance(1)
            sim.engine.create_thread()
        since = int(clock.now()) + 1
        for _ in range(120):
            clock.advance(2)
            sim.engine.now()
        sim.engine.set_workload(False)  # from here on, only the threads created below are new
        recent = {t for t in sim.thread_ids() if sim.engine.api_get_thread(t)["created_at"] >= since}
        assert len(recent) >= 3  # the scenario opened threads while running
        for _ in range(130):  # enough to need two pages
            clock.advance(0.5)
            recent.add(sim.engine.create_thread())

        async def first_and_second_pass() -> tuple[Discovered, Discovered, set[str]]:
            token = httpx.get(
                sim.identity_endpoint,
                params={"resource": "https://ai.azure.com", "api-version": "2019-08-01"},
                headers={"X-IDENTITY-HEADER": sim.identity_header},
            ).json()["access_token"]
            async with httpx.AsyncClient(
                base_url=sim.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
            ) as http:

                async def fetch(params: dict[str, str]) -> bytes | None:
                    resp = await http.get("/threads", params={**params, "api-version": "v1"})
                    return resp.content if resp.status_code == 200 else None

                known: set[str] = set()
                first = await discover_threads(fetch, known.__contains__, since)
                known.update(t.id for t in first.threads)
                clock.advance(1)
                newer = {sim.engine.create_thread(), sim.engine.create_thread()}
                second = await discover_threads(fetch, known.__contains__, since)
                return first, second, newer

        first, second, newer = asyncio.run(first_and_second_pass())
    assert {t.id for t in first.threads} == recent
    assert first.finished and first.stopped == "since"
    assert first.requests == len(recent) // 100 + 1  # the page that reaches `since` is the last one
    assert {t.id for t in second.threads} == newer
    assert (second.requests, second.finished, second.stopped) == (1, True, "known")
