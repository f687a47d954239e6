"""Session webhooks (`agent.session.*`): read only after verification, deduped by webhook-id, counted under a
bounded type label; a watched session is polled at once (or again after the poll in flight), an unknown one
is left to a discovery pass, and the simulator's signed session deliveries are accepted by the official SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from openai.types.webhooks import (
    AgentSessionActionRequiredWebhookEvent,
    AgentSessionCreatedWebhookEvent,
    AgentSessionFailedWebhookEvent,
    AgentSessionIdleWebhookEvent,
    AgentSessionInProgressWebhookEvent,
)
from standardwebhooks.webhooks import Webhook

from exporter.aggregates import Aggregates
from exporter.inbox import Delivery
from exporter.model import SOURCE_SESSIONS
from exporter.scheduler import Schedule, Scheduler
from exporter.selfmetrics import SelfMetrics
from exporter.simulator import FakeClock
from exporter.simulator.sessions import SessionsEngine
from exporter.simulator.webhooks import Announcers, WebhookFaults, WebhookSender
from exporter.sources import PollResult
from exporter.sources.session_events import MAX_WAITING, SessionEvents
from exporter.sources.webhook_policy import WebhookPolicy
from exporter.sources.webhooks import EVENT_TYPES, SESSION_EVENTS, DeliveryLog, read_event
from exporter.tracker import Tracker
from exporter.watchlist import WatchList
from tests.helpers import wait_until
from tests.test_webhooks import _post, _signed

NOW = 1_790_000_000
SECRET = "whsec_" + base64.b64encode(b"session-webhook-secret-0123456789").decode()


def _event(event_type: str, session: object = "sess_1", at: object = NOW - 3) -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": event_type, "created_at": at,
                       "data": {"id": session, "environment_type": "none"}}).encode()


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("event_type", SESSION_EVENTS)
def test_each_session_event_names_its_session(event_type: str) -> None:
    delivery = read_event(_event(event_type), "msg_1")
    assert delivery is not None
    assert (delivery.event_type, delivery.session, delivery.at, delivery.run) == (event_type, "sess_1", NOW - 3,
                                                                                   None)


@pytest.mark.parametrize("session", ["", "a/b", "sess\ud800", "x" * 5000, 7, None, ["sess_1"]])
def test_a_session_event_with_an_unusable_id_is_malformed(session: object) -> None:
    assert read_event(_event("agent.session.idle", session=session), "m") is None


@pytest.mark.parametrize("at", [True, -1, 2**53, "1790000000", 1.5, None])
def test_a_session_event_with_a_bad_time_is_malformed(at: object) -> None:
    assert read_event(_event("agent.session.created", at=at), "m") is None


def test_other_agent_events_are_other_and_every_type_label_is_bounded() -> None:
    delivery = read_event(_event("agent.environment.ready"), "m")
    assert delivery is not None and delivery.event_type == "other" and delivery.session is None
    assert set(SESSION_EVENTS) <= set(EVENT_TYPES) and len(EVENT_TYPES) == len(set(EVENT_TYPES))


def test_the_receiver_verifies_before_it_reads_a_session_event() -> None:
    body = _event("agent.session.in_progress").decode()
    response, results, received = asyncio.run(_post([SECRET], body, _signed(body, SECRET)))
    assert response.status_code == 200
    [delivery] = received
    assert delivery.session == "sess_1" and delivery.event_type == "agent.session.in_progress"
    # The same body with a signature by another secret is refused before it is parsed.
    other = "whsec_" + base64.b64encode(b"another-secret-another-secret-12").decode()
    response, results, received = asyncio.run(_post([SECRET], body, _signed(body, other)))
    assert response.status_code == 400 and not received
    assert results == Counter({("unverified", "bad_signature"): 1})


# ------------------------------------------------------------------------------------------ the policy


class Calls:
    def __init__(self) -> None:
        self.hurried: list[str] = []
        self.discoveries = 0
        self.added: list[str] = []


def _policy(watchlist: WatchList, filtered: bool = False) -> tuple[SessionEvents, Calls]:
    calls = Calls()

    def discover() -> None:
        calls.discoveries += 1

    events = SessionEvents(watchlist=watchlist, hurry=lambda session, _: calls.hurried.append(session),
                           discover_now=discover,
                           filtered=filtered, on_added=calls.added.append)
    return events, calls


def _delivery(session: str, event_type: str = "agent.session.in_progress", at: int = NOW) -> Delivery:
    return Delivery("msg_" + session + event_type, event_type, None, session=session, at=at)


def test_a_watched_session_is_hurried_and_an_unknown_one_waits_for_discovery() -> None:
    watchlist = WatchList()
    watchlist.discover("sess_known", SOURCE_SESSIONS, NOW - 100)
    events, calls = _policy(watchlist)
    events.event(_delivery("sess_known"), NOW)
    assert calls.hurried == ["sess_known"] and calls.discoveries == 0
    events.event(_delivery("sess_new", "agent.session.created"), NOW)
    assert calls.hurried == ["sess_known"] and calls.discoveries == 1 and "sess_new" in events.waiting


def test_a_pass_that_began_before_the_event_does_not_settle_it() -> None:
    watchlist = WatchList()
    events, _ = _policy(watchlist)
    events.event(_delivery("sess_new"), NOW)
    assert not events.after_discovery(NOW - 1, finished=True)
    assert "sess_new" in events.waiting and "sess_new" not in watchlist.wanted()


def test_a_session_discovery_listed_is_settled_by_it() -> None:
    watchlist = WatchList()
    events, calls = _policy(watchlist)
    events.event(_delivery("sess_new"), NOW)
    watchlist.discover("sess_new", SOURCE_SESSIONS, NOW - 2)  # what the pass found (and decided)
    assert not events.after_discovery(NOW + 1, finished=True)
    assert not events.waiting and calls.added == []
    assert watchlist.discovered["sess_new"] == (SOURCE_SESSIONS, NOW - 2)


def test_a_session_discovery_did_not_list_is_watched_from_the_event_on() -> None:
    watchlist = WatchList()
    events, calls = _policy(watchlist)
    events.event(_delivery("sess_old", at=NOW - 5), NOW)
    assert not events.after_discovery(NOW + 1, finished=False)  # an unfinished pass decides nothing
    assert "sess_old" in events.waiting
    assert events.after_discovery(NOW + 2, finished=True)
    assert watchlist.discovered["sess_old"] == (SOURCE_SESSIONS, NOW - 5) and calls.added == ["sess_old"]
    assert not events.waiting


def test_with_an_agent_filter_only_sessions_discovery_lists_are_watched() -> None:
    watchlist = WatchList()
    events, _ = _policy(watchlist, filtered=True)
    events.event(_delivery("sess_other_agent"), NOW)
    assert not events.after_discovery(NOW + 1, finished=True)
    assert not events.waiting and "sess_other_agent" not in watchlist.wanted()


def test_another_shards_session_and_another_sources_scope_are_left_alone() -> None:
    watchlist = WatchList(static=["sess_thread_like"], owns=lambda scope: scope != "sess_theirs")
    events, calls = _policy(watchlist)
    events.event(_delivery("sess_theirs"), NOW)
    events.event(_delivery("sess_thread_like"), NOW)
    assert calls.hurried == [] and calls.discoveries == 0 and not events.waiting


def test_waiting_sessions_are_bounded() -> None:
    events, _ = _policy(WatchList())
    for i in range(MAX_WAITING + 5):
        events.event(_delivery(f"sess_{i}"), NOW)
    assert len(events.waiting) == MAX_WAITING and "sess_0" not in events.waiting


def test_a_repeated_delivery_is_a_duplicate_and_hurries_nothing() -> None:
    tracker = Tracker([], 3600)
    metrics = SelfMetrics(Aggregates())
    watchlist = WatchList()
    watchlist.discover("sess_1", SOURCE_SESSIONS, NOW)
    events, calls = _policy(watchlist)
    policy = WebhookPolicy(DeliveryLog(), tracker, metrics, lambda ids: {}, None, events.event)
    for _ in range(2):
        policy.deliver(_delivery("sess_1", "agent.session.idle"), NOW)
    assert calls.hurried == ["sess_1"]
    counters = metrics.aggregates.counters
    assert counters[("assistants_exporter_webhooks_total", ("agent.session.idle", "accepted"))] == 1
    assert counters[("assistants_exporter_webhooks_total", ("agent.session.idle", "duplicate"))] == 1
    assert tracker.runs == {}  # a session event counts no turn


# ------------------------------------------------------------------------------------------ the scheduler


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hurry_makes_an_idle_slot_due_now_and_a_polled_one_due_again() -> None:
    mono = Mono()
    scheduler = Scheduler(Schedule(1.0, 60.0), mono)
    scheduler.sync({"sess_a": SOURCE_SESSIONS, "sess_b": SOURCE_SESSIONS})
    for scope in ("sess_a", "sess_b"):
        scheduler.slots[scope].due = mono.now + 50
    scheduler.hurry("sess_a")
    assert scheduler.due(lambda _: False) == ["sess_a"]
    # sess_b is being polled when the event comes: the poll may have read it before the change.
    scheduler.slots["sess_b"].task = object()  # type: ignore[assignment]
    scheduler.hurry("sess_b")
    scheduler.slots["sess_b"].task = None
    mono.now += 0.5
    scheduler.finished(PollResult("sess_b", "ok", started=mono.now - 0.1, api_reached=True), active=False)
    assert scheduler.slots["sess_b"].due <= mono.now and not scheduler.slots["sess_b"].again
    # a backed-off slot keeps its backoff (the API is failing), but the poll stays owed, streamed or not
    scheduler.slots["sess_a"].failures, scheduler.slots["sess_a"].due = 2, mono.now + 30
    scheduler.streamed.add("sess_a")
    scheduler.hurry("sess_a")
    assert scheduler.slots["sess_a"].due == mono.now + 30 and scheduler.slots["sess_a"].owed
    mono.now += 31
    assert "sess_a" in scheduler.due(lambda _: False)
    # the owed listing of a streamed scope fails: still owed after its backoff
    scheduler.slots["sess_a"].task = None
    scheduler.finished(PollResult("sess_a", "error", started=mono.now), active=True)
    assert scheduler.slots["sess_a"].owed and scheduler.slots["sess_a"].due > mono.now
    scheduler.hurry("sess_unknown")  # nothing to do, no error


# ------------------------------------------------------------------------------------------ the SDK


class _Capture(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Capture", (_Capture,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/openai", received
    server.shutdown()
    server.server_close()


SDK_TYPES = {
    "agent.session.created": AgentSessionCreatedWebhookEvent,
    "agent.session.in_progress": AgentSessionInProgressWebhookEvent,
    "agent.session.action_required": AgentSessionActionRequiredWebhookEvent,
    "agent.session.idle": AgentSessionIdleWebhookEvent,
    "agent.session.failed": AgentSessionFailedWebhookEvent,
}


def test_the_sdk_unwraps_the_simulators_session_deliveries(
        capture: tuple[str, list[tuple[dict[str, str], bytes]]]) -> None:
    url, received = capture
    clock = FakeClock(float(int(datetime.now(UTC).timestamp())))
    engine = SessionsEngine(clock, seed=3)
    sid = engine.create_session()
    engine.create_turn(sid, [("queued", 1), ("in_progress", 2), ("waiting", 2), ("in_progress", 1),
                             ("completed", 0)])
    clock.advance(10)
    engine.fail_session(sid)
    sender = WebhookSender(Announcers(engine), url, SECRET, WebhookFaults(duplicate=1.0)).start()
    try:
        wait_until(lambda: len(received) >= 12 and sender.idle(), 10, 0.05, "every delivery")
    finally:
        sender.stop()
    client = openai.OpenAI(api_key="sk-unused", webhook_secret=SECRET, base_url="http://127.0.0.1:9/v1")
    seen: list[str] = []
    for headers, body in received:
        event = client.webhooks.unwrap(body.decode(), headers)  # verifies, then validates
        assert type(event) is SDK_TYPES[event.type]
        assert event.data.id == sid
        seen.append(event.type)
    # created, in progress, action required, in progress, idle, failed, in order; then each again (the
    # duplicate knob), under the same webhook-id
    assert len(received) == 12
    assert seen[:6] == ["agent.session.created", "agent.session.in_progress", "agent.session.action_required",
                        "agent.session.in_progress", "agent.session.idle", "agent.session.failed"]
    ids = [headers["webhook-id"] for headers, _ in received]
    assert sorted(seen[6:]) == sorted(seen[:6]) and sorted(ids[6:]) == sorted(ids[:6]) and len(set(ids)) == 6
    # the independent Standard Webhooks implementation agrees
    for headers, body in received:
        Webhook(SECRET).verify(body, headers)
