"""The push receiver: item forms, status forms, limits, auth, and answers given only after the commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from exporter.daemon import Daemon
from exporter.metrics import SnapshotCollector
from exporter.model import SOURCE_PUSH
from exporter.scheduler import Schedule
from exporter.sources.push import ENUM_BY_VALUE, PushReceiver, PushTokens, parse_item, split_body
from exporter.store import Store
from exporter.tracker import DEDUPE_WINDOW, Tracker
from exporter.watchlist import WatchList

pytestmark = pytest.mark.anyio

TOKEN = "push-token-0123456789"
NOW = 1_800_000_000.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- parsing ----------------------------------------------------------------------------------------


def test_every_item_form_becomes_a_push_snapshot() -> None:
    run = {"id": "run_1", "object": "thread.run", "thread_id": "thread_a", "status": "completed",
           "created_at": 100, "completed_at": 130, "assistant_id": "asst", "model": "gpt",
           "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    event = {"event": "thread.run.failed", "data": {**run, "id": "run_2", "status": "failed",
                                                    "last_error": {"code": "server_error"}}}
    response = {"id": "resp_1", "object": "response", "status": "incomplete", "created_at": 100.25,
                "model": "gpt-r", "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"input_tokens": 5, "output_tokens": 6}}
    minimal = {"id": "run_3", "status": "InProgress"}
    snaps = [parse_item(item, NOW).snapshot for item in (run, event, response, minimal)]
    assert all(s is not None and s.source == SOURCE_PUSH for s in snaps)
    a, b, c, d = snaps
    assert a is not None and (a.scope, a.status, a.completed_at, a.prompt_tokens) == ("thread_a", "completed", 130, 3)
    assert b is not None and (b.status, b.error_code) == ("failed", "server_error")
    assert c is not None and (c.scope, c.status, c.created_at, c.incomplete_reason) == (
        "", "incomplete", 100, "max_output_tokens")
    assert (c.prompt_tokens, c.completion_tokens, c.model) == (5, 6, "gpt-r")
    assert d is not None and (d.status, d.created_at, d.scope) == ("in_progress", int(NOW), "")


@pytest.mark.parametrize(("value", "status"), list(enumerate(
    ["unknown", "created", "queued", "in_progress", "completed", "requires_action", "expired", "cancelling",
     "cancelled", "failed", "incomplete"])))
def test_runstatus_integers_and_names_map_to_the_same_status(value: int, status: str) -> None:
    by_int = parse_item({"id": "r", "status": value}, NOW).snapshot
    by_name = parse_item({"id": "r", "status": ENUM_BY_VALUE[value]}, NOW).snapshot
    assert by_int is not None and by_name is not None and by_int.status == by_name.status == status


@pytest.mark.parametrize(("item", "reason"), [
    ([1], "not_object"),
    ({"status": "queued"}, "missing_id"),
    ({"id": "r"}, "missing_status"),
    ({"id": "r", "status": "exploded"}, "unknown_status"),
    ({"id": "r", "status": 11}, "unknown_status"),
    ({"id": "r", "status": True}, "unknown_status"),
    ({"id": "r", "status": "queued", "created_at": "yesterday"}, "wrong_type"),
    ({"id": "r", "status": "queued", "thread_id": "a/b"}, "wrong_type"),
    ({"event": "thread.message.created", "data": {"id": "m"}}, "unsupported_event"),
    ({"event": "thread.run.step.completed", "data": {"id": "s"}}, "unsupported_event"),
])
def test_bad_items_are_rejected_with_a_reason(item: object, reason: str) -> None:
    parsed = parse_item(item, NOW)
    assert parsed.snapshot is None and parsed.invalid_reason == reason


def test_ndjson_lines_that_are_not_json_are_bad_items_not_a_bad_body() -> None:
    items = split_body(b'{"id": "a", "status": "queued"}\n{oops\n\n{"id": "b", "status": 2}\n', ndjson=True)
    assert items is not None and len(items) == 3
    assert split_body(b"{oops", ndjson=False) is None


# -- over HTTP, with the daemon's loop committing --------------------------------------------------


class Running:
    def __init__(self, tmp_path: Path) -> None:
        self.tracker = Tracker(["assistant_id"], 3600, dedupe_window=DEDUPE_WINDOW)
        self.daemon = Daemon(sources={}, tracker=self.tracker, store=Store(tmp_path / "s.db", ["assistant_id"]),
                             collector=SnapshotCollector(), schedule=Schedule(1, 10), watchlist=WatchList(),
                             run_sources=("push",))
        self.receiver = PushReceiver(self.daemon.inbox, PushTokens([TOKEN]), max_body=4096, clock=lambda: NOW,
                                     on_request=self.daemon.selfmetrics.push_request)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=self.receiver.routes())),
                                        base_url="http://127.0.0.1")

    def finished(self, status: str, assistant: str = "") -> float:
        return self.tracker.aggregates.counter("assistants_runs_finished_total", (status, "push", assistant))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    r = Running(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(r.daemon.run(stop))
    yield r
    stop.set()
    await asyncio.wait_for(task, 10)
    await r.client.aclose()


def _json(body: object) -> dict[str, str]:
    return {**AUTH, "Content-Type": "application/json"}


async def test_push_counts_once_whatever_the_order_and_repetition(running: Running) -> None:
    base = {"id": "run_9", "created_at": int(NOW) - 30, "assistant_id": "asst"}
    items = [{**base, "status": "Queued"}, {**base, "status": 3}, {**base, "status": "completed",
                                                                    "completed_at": int(NOW) - 1}]
    answer = await running.client.post("/api/v1/runs", json=items, headers=AUTH)
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 3, "duplicates": 0, "stale": 0, "invalid": []}
    again = await running.client.post("/api/v1/runs", json=[items[2], items[1], {**base, "status": "failed"}],
                                      headers=AUTH)
    assert again.json() == {"accepted": 0, "duplicates": 1, "stale": 2, "invalid": []}
    assert running.finished("completed", "asst") == 1 and running.finished("failed", "asst") == 0
    # Committed before the answer: a new store sees it.
    loaded = Store(running.daemon.store.path, ["assistant_id"]).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "push", "asst")) == 1


async def test_one_bad_item_never_rejects_its_neighbours(running: Running) -> None:
    body = b'{"id": "a", "status": "completed"}\n{oops\n{"id": "b"}\n{"id": "c", "status": "Failed"}\n'
    answer = await running.client.post("/api/v1/runs", content=body,
                                       headers={**AUTH, "Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 2, "duplicates": 0, "stale": 0,
                             "invalid": [{"index": 1, "reason": "not_json"}, {"index": 2, "reason": "missing_status"}]}
    items = running.tracker.aggregates
    assert items.counter("assistants_exporter_push_items_total", ("invalid",)) == 2
    assert items.counter("assistants_exporter_push_items_total", ("accepted",)) == 2


@pytest.mark.parametrize(("headers", "body", "code"), [
    ({}, b"{}", 401),
    ({"Authorization": "Bearer wrong-token-0123456789"}, b"{}", 401),
    ({**AUTH, "Content-Type": "text/plain"}, b"{}", 415),
    ({**AUTH, "Content-Type": "application/json"}, b"{not json", 400),
    ({**AUTH, "Content-Type": "application/json"}, b"[" + b"1," * 3000 + b"1]", 413),
    ({**AUTH, "Content-Type": "application/json"}, json.dumps([{"id": f"r{i}", "status": 1} for i in range(1001)]
                                                              ).encode()[:4000] + b"]", 400),
])
async def test_bad_requests_get_the_documented_status(running: Running, headers: dict[str, str], body: bytes,
                                                       code: int) -> None:
    answer = await running.client.post("/api/v1/runs", content=body, headers=headers)
    assert answer.status_code == code
    if code == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
    assert running.tracker.aggregates.counter("assistants_exporter_push_requests_total", (str(code),)) == 1


async def test_more_than_a_thousand_items_is_too_many(tmp_path: Path) -> None:
    r = Running(tmp_path)
    r.receiver.max_body = 1 << 20
    body = json.dumps([{"id": f"r{i}", "status": 1} for i in range(1001)])
    answer = await r.client.post("/api/v1/runs", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 413 and "1000" in answer.json()["error"]


async def test_thread_registration_round_trip(running: Running) -> None:
    put = await running.client.put("/api/v1/threads/thread_abc", headers=AUTH)
    assert put.status_code == 200 and put.json() == {"thread_id": "thread_abc", "result": "added"}
    bad = await running.client.put("/api/v1/threads/a%20b", headers=AUTH)
    assert bad.status_code == 400
    gone = await running.client.delete("/api/v1/threads/thread_abc", headers=AUTH)
    assert gone.json()["result"] == "removed"
    missing = await running.client.delete("/api/v1/threads/thread_abc", headers=AUTH)
    assert missing.status_code == 404


async def test_a_push_the_store_cannot_write_is_never_answered_200(tmp_path: Path) -> None:
    """Regression (issue 16): a lone surrogate made the commit raise, the shutdown path committed an empty batch
    and answered {"accepted": 2}, and `ok2` was not in the state file. Now the batch is kept, the loop goes on,
    and the waiting request gets 503 at the stop (or, once such ids are refused when parsed, a 200 that says
    so and whose other item is written)."""
    r = Running(tmp_path)
    stop = asyncio.Event()
    loop = asyncio.create_task(r.daemon.run(stop))
    body = '[{"id": "run\\ud800x", "status": "completed"}, {"id": "ok2", "status": "completed"}]'
    post = asyncio.create_task(r.client.post("/api/v1/runs", content=body, headers=_json(None)))
    while not post.done() and r.daemon.health.store_error is None:
        await asyncio.sleep(0)
    if r.daemon.health.store_error is not None:
        assert "UnicodeEncodeError" in r.daemon.health.store_error and "\\ud800" in r.daemon.health.store_error
        assert not post.done() and not loop.done()  # nothing answered for what was not written; the loop runs
    stop.set()
    await asyncio.wait_for(loop, 10)
    answer = await asyncio.wait_for(post, 10)
    await r.client.aclose()
    loaded = Store(r.daemon.store.path, ["assistant_id"]).load()
    if answer.status_code == 200:
        assert [entry["index"] for entry in answer.json()["invalid"]] == [0]
        assert {run.id for run in loaded.runs} == {"ok2"}
    else:
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert not loaded.runs
