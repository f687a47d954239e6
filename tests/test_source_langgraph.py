"""The LangGraph source: the offset pager under lists that change between its requests, the poller's requests
and the stop rule, the thread search, and its configuration. The server here is a stand-in
(httpx.MockTransport) whose lists can be changed between two requests; tests/test_integration_langgraph.py
runs the real one, tests/test_model_langgraph.py reads its objects."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import ConfigError, load_config
from exporter.model import (
    REASON_MALFORMED_PAGE,
    REASON_MISSING_ID,
)
from exporter.model_langgraph import item_key
from exporter.sources.api import ApiSettings
from exporter.sources.langgraph import SETTLE, LangGraphDiscovery, LangGraphSource
from exporter.sources.listing import page_by_offset
from exporter.tracker import Tracker

T0 = 1_796_339_048  # 2026-12-03T23:04:08Z


def iso(seconds: float) -> str:
    whole = math.floor(seconds)
    micro = round((seconds - whole) * 1e6)
    from datetime import UTC, datetime

    return datetime.fromtimestamp(whole, UTC).replace(microsecond=micro).isoformat()


def run(n: int, status: str = "success", thread: str = "th-1", **fields: Any) -> dict[str, Any]:
    base = {"run_id": f"run-{n:04d}", "thread_id": thread, "assistant_id": "asst-1", "status": status,
            "created_at": iso(T0 + n + 0.25), "updated_at": iso(T0 + n + 5.5), "metadata": {"graph_id": "g"},
            "multitask_strategy": "enqueue"}
    return {**base, **fields}


# --- the offset pager ------------------------------------------------------------------------------------


@dataclass
class Listing:
    """A newest-first list served by offset; `between` runs before every request but the first."""

    items: list[dict[str, Any]]
    between: Callable[[int], None] = lambda request: None
    requests: list[tuple[int, int]] = field(default_factory=list)

    async def fetch(self, offset: int, limit: int) -> bytes | None:
        if self.requests:
            self.between(len(self.requests))
        self.requests.append((offset, limit))
        return json.dumps(self.items[offset:offset + limit]).encode()


def _page(listing: Listing, limit: int = 10, overlap: int = 3, stop: Callable[[list[str]], bool] | None = None,
          ) -> tuple[list[str], str, dict[str, int]]:
    got: list[str] = []

    def on_page(items: list[str]) -> bool:
        got.extend(items)
        return stop(got) if stop else False

    def read(item: object) -> tuple[str | None, str | None]:
        key = item_key(item, "run_id")
        return (key, None) if key else (None, REASON_MISSING_ID)

    listed = asyncio.run(page_by_offset(listing.fetch, read, lambda i: item_key(i, "run_id"), on_page, limit=limit,
                                        overlap=overlap, max_pages=100))
    return got, listed.stopped, listed.invalid


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["run_id"] for i in items]


def test_an_unchanging_list_is_read_once_each_page_overlapping_the_last() -> None:
    listing = Listing([run(n) for n in range(25, 0, -1)])
    got, stopped, _ = _page(listing)
    assert got == ids(listing.items) and stopped == "end"
    assert listing.requests == [(0, 10), (7, 10), (14, 10), (21, 10)]


def test_runs_created_during_a_poll_are_not_read_twice_and_none_is_missed() -> None:
    items = [run(n) for n in range(30, 0, -1)]
    before = ids(items)
    listing = Listing(items)
    listing.between = lambda request: [items.insert(0, run(100 + request * 10 + k)) for k in range(4)]
    got, stopped, _ = _page(listing)
    assert stopped == "end" and len(got) == len(set(got))
    assert set(before) <= set(got)


def test_runs_deleted_during_a_poll_skip_nothing_that_is_left() -> None:
    items = [run(n) for n in range(30, 0, -1)]
    listing = Listing(items)

    def delete(request: int) -> None:  # a rollback deletes the last run read and one before it
        read_upto = request * 7 + 3
        del items[read_upto - 1]
        del items[read_upto - 3]

    listing.between = delete
    got, stopped, _ = _page(listing)
    assert stopped == "end"
    assert set(ids(items)) <= set(got)


def test_a_list_that_moves_by_more_than_the_overlap_stops_the_pager_as_shifted() -> None:
    items = [run(n) for n in range(30, 0, -1)]
    listing = Listing(items)
    listing.between = lambda request: items.__delitem__(slice(0, 10))
    got, stopped, _ = _page(listing)
    assert stopped == "shifted" and got == [f"run-{n:04d}" for n in range(30, 20, -1)]


def test_the_stop_hook_ends_paging_and_bad_pages_are_counted() -> None:
    listing = Listing([run(n) for n in range(25, 0, -1)])
    got, stopped, _ = _page(listing, stop=lambda seen: len(seen) >= 5)
    assert (len(got), stopped, len(listing.requests)) == (10, "hook", 1)
    for body in (b'{"data": []}', b"[1,", b"\xff", b'"x"'):
        async def fetch(offset: int, limit: int, body: bytes = body) -> bytes:
            return body
        listed = asyncio.run(page_by_offset(fetch, lambda i: (None, None), lambda i: None, lambda items: False,
                                            limit=5, overlap=2, max_pages=3))
        assert listed.stopped == "malformed" and listed.invalid == {REASON_MALFORMED_PAGE: 1}
    bad = Listing([run(3), {"run_id": 4}, "x", run(1)])
    got, stopped, invalid = _page(bad)
    assert got == ["run-0003", "run-0001"] and invalid == {REASON_MISSING_ID: 2} and stopped == "end"


# --- the poller and the search against a stand-in server ------------------------------------------------


@dataclass
class Server:
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    threads: list[dict[str, Any]] = field(default_factory=list)
    seen: list[httpx.Request] = field(default_factory=list)
    between: Callable[[int], None] = lambda request: None

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.seen:
            self.between(len(self.seen))
        self.seen.append(request)
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts == ["threads", "search"]:
            body = json.loads(request.content)
            ordered = sorted(self.threads, key=lambda t: t["updated_at"], reverse=True)
            page = ordered[body["offset"]:body["offset"] + body["limit"]]
            return httpx.Response(200, json=[{k: t[k] for k in body["select"]} for t in page])
        if request.method == "GET" and len(parts) == 3 and parts[2] == "runs":
            if parts[1] not in self.runs:
                return httpx.Response(404, json={"detail": f"Thread with ID {parts[1]} not found"})
            offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
            select = request.url.params.get_list("select")
            page = self.runs[parts[1]][offset:offset + limit]
            return httpx.Response(200, json=[{k: r[k] for k in select if k in r} for r in page])
        return httpx.Response(404, json={"detail": "Not Found"})


def source(server: Server, key: str = "", page_limit: int = 10) -> LangGraphSource:
    settings = ApiSettings(base_url="http://lg.test", api_key=key, page_limit=page_limit,
                           max_requests_per_second=1000.0)
    return LangGraphSource(settings, transport=httpx.MockTransport(server.handle))


def test_the_poller_asks_for_the_fields_it_reads_with_the_key_as_x_api_key() -> None:
    server = Server(runs={"th-1": [run(n, "pending" if n > 8 else "success") for n in range(10, 0, -1)]})

    async def go(key: str) -> Any:
        client = source(server, key)
        try:
            return await client.poll("th-1", lambda runs: False)
        finally:
            await client.aclose()

    result = asyncio.run(go("lsv2_sk_test"))
    assert (result.outcome, result.complete, result.api_reached) == ("ok", True, True)
    assert [r.status for r in result.runs[:3]] == ["queued", "queued", "completed"]
    request = server.seen[0]
    assert request.headers["x-api-key"] == "lsv2_sk_test"
    assert "authorization" not in request.headers and "openai-beta" not in request.headers
    assert request.url.params.get_list("select") == [
        "run_id", "thread_id", "assistant_id", "status", "created_at", "updated_at"]
    assert (request.url.params["limit"], request.url.params["offset"]) == ("10", "0")
    asyncio.run(go(""))
    assert "x-api-key" not in server.seen[-1].headers  # a server without auth gets no key header


def test_a_deleted_thread_is_gone_and_a_bad_thread_id_is_never_sent() -> None:
    server = Server()

    async def go() -> tuple[Any, Any]:
        client = source(server)
        gone, bad = await client.poll("th-x", lambda runs: False), await client.poll("a/b", lambda runs: False)
        await client.aclose()
        return gone, bad

    gone, bad = asyncio.run(go())
    assert gone.outcome == "gone" and bad.outcome == "error" and len(server.seen) == 1


def _tracked_polls(server: Server, tracker: Tracker, now: float, polls: int = 1) -> list[Any]:
    async def go() -> list[Any]:
        client = source(server)
        results = []
        for _ in range(polls):
            result = await client.poll("th-1", lambda seen: tracker.should_stop("th-1", seen))
            tracker.observe_listing("th-1", result.runs, now, complete=result.complete, ok=result.outcome == "ok")
            results.append(result)
        await client.aclose()
        return results

    return asyncio.run(go())


def test_the_stop_rule_stays_exact_when_runs_are_created_and_rolled_back_during_a_poll() -> None:
    runs = [run(n, "pending" if n % 7 == 0 else "success") for n in range(60, 0, -1)]
    server = Server(runs={"th-1": runs})
    tracker = Tracker(("assistant_id",), retention=1e9)
    tracker.watch("th-1", born=T0)  # every run counts
    _tracked_polls(server, tracker, T0 + 100.0)
    assert set(tracker.runs) == {r["run_id"] for r in runs}
    pending = [r for r in runs if r["status"] == "pending"]
    assert len(pending) == 8

    rolled: list[str] = []

    def change(request: int) -> None:
        runs.insert(0, run(200 + request, "success"))  # a new run, pushing every page down
        if not rolled:
            victim = next(r for r in runs[5:] if r["status"] == "pending")
            runs.remove(victim)  # cancelled with action=rollback: it is deleted
            rolled.append(victim["run_id"])
        for r in runs:
            r["status"] = "success" if r["status"] == "pending" else r["status"]

    server.between = change
    results = _tracked_polls(server, tracker, T0 + 200.0, polls=3)
    assert [(r.outcome, r.error) for r in results] == [("ok", None)] * 3
    listed = {r["run_id"] for r in runs}
    assert listed <= set(tracker.runs)  # every run still there was seen, none skipped
    assert not tracker.is_active("th-1") and rolled[0] not in tracker.runs  # deleted: never counted
    assert {tracker.runs[r].status for r in listed} == {"completed"}


def test_a_poll_whose_list_moved_too_far_fails_and_moves_no_coverage() -> None:
    runs = [run(n) for n in range(40, 0, -1)]
    server = Server(runs={"th-1": runs})
    server.between = lambda request: runs.__delitem__(slice(0, 12))
    tracker = Tracker((), retention=1e9)
    results = _tracked_polls(server, tracker, T0 + 100.0)
    assert results[0].outcome == "error" and "moved" in (results[0].error or "")
    assert not tracker.scopes["th-1"].swept


def test_a_poll_that_reaches_max_pages_keeps_what_it_read_as_incomplete() -> None:
    server = Server(runs={"th-1": [run(n) for n in range(50, 0, -1)]})
    settings = ApiSettings(base_url="http://lg.test", api_key="", page_limit=10, max_pages=2,
                           max_requests_per_second=1000.0)

    async def go() -> Any:
        client = LangGraphSource(settings, transport=httpx.MockTransport(server.handle))
        try:
            return await client.poll("th-1", lambda runs: False)
        finally:
            await client.aclose()

    result = asyncio.run(go())
    assert (result.outcome, result.complete, len(server.seen)) == ("ok", False, 2)
    assert [r.id for r in result.runs] == [f"run-{n:04d}" for n in range(50, 35, -1)]  # 10, then 5 past the overlap


def thread(n: int, updated: float, created: float | None = None) -> dict[str, Any]:
    return {"thread_id": f"th-{n}", "created_at": iso(created if created is not None else updated - 50),
            "updated_at": iso(updated), "status": "idle", "metadata": {}, "values": None}


def test_discovery_reads_most_recently_changed_first_and_stops_at_what_it_saw_last() -> None:
    server = Server(threads=[thread(n, T0 + n) for n in range(1, 31)])
    known: set[str] = set()
    wall = [T0 + 100.0]

    async def go() -> Any:
        client = source(server)
        found = LangGraphDiscovery(client, lookback=80.0, clock=lambda: wall[0])
        first = await found.discover(known.__contains__)
        known.update(s for s, _ in first.scopes)
        before = len(server.seen)
        server.threads.append(thread(99, T0 + 200, created=T0 - 5000))  # an old thread, busy again
        second = await found.discover(known.__contains__)
        await client.aclose()
        return first, second, before, found.settled

    first, second, before, settled = asyncio.run(go())
    # The lookback ends at T0 + 20: threads 20..30 changed since then, newest first.
    assert [s for s, _ in first.scopes] == [f"th-{n}" for n in range(30, 19, -1)] and first.error is None
    assert dict(first.scopes)["th-30"] == T0 - 20  # the creation time: born watched is decided on it
    assert [s for s, _ in second.scopes] == ["th-99"] and settled == T0 + 200
    # Every thread read reports its last change, known or not: the second pass re-read SETTLE seconds back.
    assert first.active["th-30"] == T0 + 30 and second.active["th-99"] == T0 + 200
    assert set(second.active) == {"th-99", *(f"th-{n}" for n in range(20, 31))}
    assert len(server.seen) - before == 1  # the second pass stopped on its first page
    body = json.loads(server.seen[-1].content)
    assert (body["sort_by"], body["sort_order"], body["offset"]) == ("updated_at", "desc", 0)


def test_a_failed_discovery_pass_is_not_settled_and_the_next_walks_to_the_lookback_again() -> None:
    server = Server(threads=[thread(n, T0 + n * 10) for n in range(1, 31)])
    server.between = lambda request: server.threads.clear() if request == 1 else None

    async def go() -> Any:
        client = source(server)
        found = LangGraphDiscovery(client, lookback=1e6, clock=lambda: T0 + 400.0, limit=10)
        first = await found.discover(lambda s: False)
        server.threads[:] = [thread(n, T0 + n * 10) for n in range(1, 31)]
        second = await found.discover(lambda s: False)
        await client.aclose()
        return first, second, found

    first, second, found = asyncio.run(go())
    assert first.error is not None and "shifted" in first.error
    assert len(second.scopes) == 30 and second.error is None  # not settled: down to the lookback again
    assert found.settled == T0 + 300 and SETTLE > 0


def test_a_pass_that_met_an_unreadable_thread_is_not_finished_and_the_next_reads_it_again() -> None:
    server = Server(threads=[thread(n, T0 + n) for n in range(1, 6)])
    server.threads[1]["created_at"] = "yesterday"  # th-2, garbled in this answer only

    async def go() -> Any:
        client = source(server)
        found = LangGraphDiscovery(client, lookback=1e6, clock=lambda: T0 + 10.0)
        first = await found.discover(lambda s: False)
        settled_after_first = found.settled
        server.threads[1]["created_at"] = iso(T0 - 48)
        known = {s for s, _ in first.scopes}
        second = await found.discover(known.__contains__)
        await client.aclose()
        return first, settled_after_first, second, found.settled

    first, settled_first, second, settled = asyncio.run(go())
    assert first.error is not None and first.invalid == {"wrong_type": 1} and settled_first is None
    assert len(first.scopes) == 4
    assert [s for s, _ in second.scopes] == ["th-2"] and second.error is None and settled == T0 + 5


# --- configuration --------------------------------------------------------------------------------------


def _config(args: list[str], env: dict[str, str], tmp_path: Path) -> Any:
    return load_config(args, {"HOME": str(tmp_path), **env})


def test_the_key_comes_from_langsmith_api_key_and_never_from_openai_api_key(tmp_path: Path) -> None:
    args = ["--source", "langgraph", "--api-base", "http://127.0.0.1:8123", "--discover-threads"]
    config = _config(args, {"LANGSMITH_API_KEY": "lsv2_a", "OPENAI_API_KEY": "sk-b"}, tmp_path)
    assert config.api_key == "lsv2_a" and config.calls_api
    assert _config(args, {"OPENAI_API_KEY": "sk-b"}, tmp_path).api_key is None  # a server without auth
    key_file = tmp_path / "key"
    key_file.write_text("lsv2_file\n")
    assert _config([*args, "--api-key-file", str(key_file)], {"LANGSMITH_API_KEY": "x"}, tmp_path).api_key == (
        "lsv2_file")
    assert "lsv2_a" in config.secrets()
    assert _config(["--thread", "t"], {"OPENAI_API_KEY": "sk-b", "LANGSMITH_API_KEY": "l"}, tmp_path).api_key == (
        "sk-b")


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "langgraph"], "--source langgraph needs --thread, --threads-file or --discover-threads"),
    (["--source", "langgraph", "--source", "threads", "--thread", "t"], "cannot run beside --source threads"),
    (["--source", "langgraph", "--thread", "t", "--credential", "azure"], "--credential azure does not apply"),
    (["--source", "sessions", "--discover-threads"], "--discover-threads needs --source threads or langgraph"),
])
def test_bad_langgraph_settings_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(args, {"OPENAI_API_KEY": "sk-b"}, tmp_path)


def test_discover_threads_is_one_flag_read_by_either_source(tmp_path: Path) -> None:
    from exporter.sources import registry

    config = _config(["--source", "langgraph", "--discover-threads"], {}, tmp_path)
    assert config.options(registry.BY_NAME["langgraph"]).discover_threads is True
    config = _config(["--discover-threads"], {"OPENAI_API_KEY": "sk"}, tmp_path)
    assert config.options(registry.BY_NAME["threads"]).discover_threads is True
