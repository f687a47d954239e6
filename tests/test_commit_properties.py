"""Property: a push answered 200 is in the state file, whatever the items (bad strings included) and whichever
commits fail; requests whose items were not written are answered 503 (or not yet), never 200.

The daemon's loop is stepped by hand on a fake clock; requests go through the real push receiver over ASGI;
the store is the real one, wrapped so that chosen commits raise before writing anything.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from exporter.committer import STORE_RETRY_MAX
from exporter.daemon import Daemon
from exporter.metrics import SnapshotCollector
from exporter.scheduler import Schedule
from exporter.sources.push import PushReceiver, PushTokens
from exporter.store import Store
from exporter.tracker import DEDUPE_WINDOW, Tracker
from exporter.watchlist import WatchList
from tests.conftest import FakeTime as Clock

TOKEN = "push-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FAILURES: tuple[Exception, ...] = (
    sqlite3.OperationalError("database or disk is full"),
    OSError(28, "No space left on device"),
    RuntimeError("a bug in the store"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
)


class FailingStore(Store):
    """The real store, whose commit number n raises failures[n] (when given) before it writes anything."""

    def __init__(self, path: Path, failures: dict[int, Exception]) -> None:
        super().__init__(path, ["assistant_id"])
        self.failures = failures
        self.calls = 0

    def commit(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        self.calls += 1
        failure = self.failures.get(self.calls)
        if failure is not None:
            raise failure
        super().commit(*args, **kwargs)  # type: ignore[arg-type]


_BAD = st.sampled_from(["\ud800", "x\udfffy", "run\ud800x", "\udbff\udc00"])
_HUGE = st.integers(50_000, 200_000).map(lambda n: "h" * n)
_STRINGS = st.one_of(st.sampled_from([f"run_{i}" for i in range(8)]), _BAD, _HUGE, st.text(max_size=12))
_STATUSES = st.sampled_from(
    ["queued", "in_progress", "completed", "failed", "Completed", "InProgress", 4, 9, True, "bogus", None, 2.5]
)


@st.composite
def items(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:  # not an object, or an id of the wrong type
        return draw(st.sampled_from([1, "run", [], None, {"id": 5, "status": "queued"}]))
    item: dict[str, object] = {"id": draw(_STRINGS), "status": draw(_STATUSES)}
    for key in ("assistant_id", "model"):
        if draw(st.booleans()):
            item[key] = draw(st.one_of(_STRINGS, st.integers(), st.none()))
    if draw(st.integers(0, 4)) == 0:
        item["last_error"] = {"code": draw(_STRINGS)}
    return item


@dataclass
class Tick:
    bodies: list[list[object]]  # requests that arrive before this tick
    advance: float  # fake seconds before the tick (a retry waits for its backoff)


ticks = st.builds(
    Tick,
    st.lists(st.lists(items(), min_size=1, max_size=5), max_size=3),
    st.sampled_from([0.0, 0.1, 1.0, STORE_RETRY_MAX]),
)


async def _until_queued(daemon: Daemon, requests: Sequence[asyncio.Task[httpx.Response]], queued: int) -> None:
    """Let the requests run until each one is answered or waits in the inbox (no timing involved)."""
    while len(daemon.inbox) < queued and not all(r.done() for r in requests):
        await asyncio.sleep(0)
        queued = min(queued, len(daemon.inbox) + sum(not r.done() for r in requests))


async def _scenario(path: Path, script: list[Tick], failures: dict[int, Exception]) -> list[Answer]:
    clock = Clock()
    store = FailingStore(path, failures)
    daemon = Daemon(
        sources={},
        tracker=Tracker(["assistant_id"], 3600, dedupe_window=DEDUPE_WINDOW),
        store=store,
        collector=SnapshotCollector(),
        schedule=Schedule(1, 10),
        watchlist=WatchList(),
        run_sources=("push",),
        wall=clock.wall,
        mono=clock.monotonic,
    )
    receiver = PushReceiver(
        daemon.inbox,
        PushTokens([TOKEN]),
        max_body=1 << 24,
        clock=clock.wall,
        on_request=daemon.selfmetrics.push_request,
        commit_timeout=3600,
    )
    app = Starlette(routes=receiver.routes())
    sent: list[tuple[asyncio.Task[httpx.Response], list[object]]] = []
    daemon.health.started = True
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        for tick in script:
            new = [
                asyncio.create_task(client.post("/api/v1/runs", content=json.dumps(body), headers=HEADERS))
                for body in tick.bodies
            ]
            sent += zip(new, tick.bodies, strict=True)
            await _until_queued(daemon, new, len(daemon.inbox) + len(new))
            clock.mono += tick.advance
            daemon.step()
        daemon.step_final()  # the shutdown path, whose commit may fail too
        answers = await asyncio.wait_for(asyncio.gather(*(task for task, _ in sent)), 30)
    store.close()
    # The body as the exporter read it: JSON joins an escaped surrogate pair into one character.
    return [
        Answer(answer.status_code, json.loads(json.dumps(body)), answer.json() if answer.status_code == 200 else None)
        for answer, (_, body) in zip(answers, sent, strict=True)
    ]


@dataclass
class Answer:
    code: int
    body: list[object]
    outcome: dict[str, object] | None


def _committed_ids(path: Path) -> set[str]:
    store = Store(path, ["assistant_id"])
    try:
        return {run.id for run in store.load().runs}
    finally:
        store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    script=st.lists(ticks, min_size=1, max_size=5),
    failures=st.dictionaries(st.integers(1, 8), st.sampled_from(FAILURES), max_size=4),
)
def test_every_item_answered_200_is_in_the_state_file(script: list[Tick], failures: dict[int, Exception]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        answers = asyncio.run(_scenario(path, script, failures))
        committed = _committed_ids(path)
    for answer in answers:
        assert answer.code in (200, 503), answer.code
        if answer.outcome is None:
            continue
        invalid = {entry["index"] for entry in answer.outcome["invalid"]}  # type: ignore[attr-defined]
        # Every item not reported invalid was applied (accepted, duplicate or stale), so it must be written.
        for index, item in enumerate(answer.body):
            if index not in invalid:
                assert isinstance(item, dict), item
                assert item["id"] in committed, f"answered 200 but not in the state file: {item['id']!r:.80}"
