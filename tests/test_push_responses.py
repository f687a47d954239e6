"""`PUT`/`DELETE /api/v1/responses/{id}` and pushed `Response` objects: ids registered for polling by id,
committed before the answer; refused when responses are not polled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from exporter.daemon import Daemon
from exporter.metrics import SnapshotCollector
from exporter.scheduler import Schedule
from exporter.sources import FetchResult
from exporter.sources.push import PushReceiver, PushTokens
from exporter.store import Store
from exporter.tracker import DEDUPE_WINDOW, Tracker
from exporter.watchlist import WatchList

pytestmark = pytest.mark.anyio

TOKEN = "push-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Never:
    """A by-id source whose fetches never end during the test (the registration is what is tested)."""

    name = "responses"

    async def fetch(self, run_id: str) -> FetchResult:
        await asyncio.Event().wait()
        raise AssertionError

    async def aclose(self) -> None:
        pass


def _app(tmp_path: Path, polls: bool) -> tuple[Daemon, httpx.AsyncClient]:
    daemon = Daemon(sources={}, by_id={"responses": Never()} if polls else {},
                    tracker=Tracker([], 3600, dedupe_window=DEDUPE_WINDOW), store=Store(tmp_path / "s.db", []),
                    collector=SnapshotCollector(), schedule=Schedule(1, 10), watchlist=WatchList())
    receiver = PushReceiver(daemon.inbox, PushTokens([TOKEN]), max_body=65536, clock=lambda: NOW,
                            on_request=daemon.selfmetrics.push_request, polls_responses=polls)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=receiver.routes())),
                               base_url="http://127.0.0.1")
    return daemon, client


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    daemon, client = _app(tmp_path, True)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    yield daemon, client
    stop.set()
    await asyncio.wait_for(task, 10)
    await client.aclose()


async def test_put_registers_a_response_for_polling_and_delete_drops_it(
        running: tuple[Daemon, httpx.AsyncClient]) -> None:
    daemon, client = running
    first = await client.put("/api/v1/responses/resp_1", headers=AUTH)
    again = await client.put("/api/v1/responses/resp_1", headers=AUTH)
    assert (first.status_code, first.json()["result"]) == (200, "added")
    assert again.json()["result"] == "exists"
    assert daemon.scheduler.slots["resp_1"].source == "responses"
    assert Store(daemon.store.path, []).load().registrations == {"resp_1": "responses"}  # committed first
    gone = await client.delete("/api/v1/responses/resp_1", headers=AUTH)
    assert gone.json()["result"] == "removed" and "resp_1" not in daemon.scheduler.slots
    assert (await client.put("/api/v1/responses/a%20b", headers=AUTH)).status_code == 400
    assert (await client.put("/api/v1/responses/resp_2")).status_code == 401


async def test_a_pushed_unfinished_response_is_followed_and_a_finished_one_is_not(
        running: tuple[Daemon, httpx.AsyncClient]) -> None:
    daemon, client = running
    items = [{"id": "resp_q", "object": "response", "status": "queued", "created_at": NOW - 3.5},
             {"id": "resp_done", "object": "response", "status": "completed", "created_at": NOW - 9,
              "completed_at": NOW - 1, "usage": {"input_tokens": 7, "output_tokens": 2}},
             {"id": "run_x", "status": "queued", "created_at": int(NOW)}]  # an Assistants run: not polled by id
    answer = await client.post("/api/v1/runs", json=items, headers=AUTH)
    assert answer.json()["accepted"] == 3
    assert set(daemon.scheduler.slots) == {"resp_q"}
    assert daemon.tracker.aggregates.counter("assistants_run_tokens_total", ("prompt", "push")) == 7


async def test_without_polling_registration_is_refused(tmp_path: Path) -> None:
    _, client = _app(tmp_path, False)
    answer = await client.put("/api/v1/responses/resp_1", headers=AUTH)
    assert answer.status_code == 409 and "--source responses" in answer.json()["error"]
    await client.aclose()
