"""The Agents API source: turns as run snapshots, the sessions poller and session discovery, against the
simulator on loopback (its clock is a FakeClock, so every timestamp is known)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import ConfigError, load_config
from exporter.model import REASON_MISSING_STATUS, REASON_UNKNOWN_STATUS, REASON_WRONG_TYPE, parse_turn
from exporter.simulator import FakeClock, Simulator
from exporter.sources import DiscoveryResult
from exporter.sources.assistants import ApiSettings
from exporter.sources.sessions import LIST_SESSIONS, LIST_TURNS, SPEC, SessionDiscovery, SessionsSource
from exporter.tracker import Tracker
from tests.conftest import SimFactory

START = 1_770_000_000.0


def turn(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "turn_1", "object": "agent.session.turn", "agent_id": "agent_a",
                            "session_id": "sess_1", "status": "completed", "created_at": 100, "started_at": 103,
                            "completed_at": 110, "error": None,
                            "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}
    return {**base, **fields}


# --- parse_turn -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "status"), [
    ("queued", "queued"), ("in_progress", "in_progress"), ("waiting", "requires_action"),
    ("completed", "completed"), ("failed", "failed"), ("cancelled", "cancelled"),
])
def test_turn_statuses_map_to_run_statuses(wire: str, status: str) -> None:
    result = parse_turn(turn(status=wire), "sess_1")
    assert result.invalid_reason is None and result.snapshot is not None
    assert result.snapshot.status == status


def test_a_turn_becomes_a_run_snapshot() -> None:
    snap = parse_turn(turn(status="failed", error={"code": "context_length_exceeded", "message": "x"}), "s").snapshot
    assert snap is not None
    assert (snap.id, snap.scope, snap.assistant_id, snap.source) == ("turn_1", "sess_1", "agent_a", "sessions")
    assert (snap.created_at, snap.started_at) == (100, 103)
    assert snap.ended_at() == 110 and snap.failed_at == 110 and snap.completed_at is None
    assert snap.error_code == "context_length_exceeded"
    assert (snap.prompt_tokens, snap.completion_tokens) == (7, 3)  # input/output -> prompt/completion
    cancelled = parse_turn(turn(status="cancelled"), "s").snapshot
    assert cancelled is not None and cancelled.ended_at() == 110 and cancelled.cancelled_at == 110


def test_a_turn_without_a_session_id_belongs_to_the_session_listed() -> None:
    snap = parse_turn(turn(session_id=None), "sess_listed").snapshot
    assert snap is not None and snap.scope == "sess_listed"


@pytest.mark.parametrize(("fields", "reason", "kept"), [
    ({"status": None}, REASON_MISSING_STATUS, True),
    ({"status": "requires_action"}, REASON_UNKNOWN_STATUS, True),  # a run status, not a turn status
    ({"status": "paused"}, REASON_UNKNOWN_STATUS, True),
    ({"created_at": "yesterday"}, REASON_WRONG_TYPE, False),
    ({"completed_at": float("nan")}, REASON_WRONG_TYPE, False),
])
def test_bad_turns_are_counted(fields: dict[str, Any], reason: str, kept: bool) -> None:
    result = parse_turn(turn(**fields), "sess_1")
    assert result.invalid_reason == reason
    assert (result.snapshot is not None) == kept
    if result.snapshot is not None:
        assert result.snapshot.status == "unknown"


# --- the poller -----------------------------------------------------------------------------------------


@pytest.fixture
def sim(make_sim: SimFactory) -> tuple[Simulator, FakeClock]:
    clock = FakeClock(start=START)
    return make_sim(seed=9, clock=clock), clock


def _source(sim: Simulator, requests: list[tuple[str, str]], **kwargs: Any) -> SessionsSource:
    settings = ApiSettings(base_url=sim.base_url, api_key="sk-test", max_requests_per_second=1000.0)
    return SessionsSource(settings, on_request=lambda e, c: requests.append((e, c)), **kwargs)


def test_every_request_carries_the_agents_beta_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": [turn()], "has_more": False})

    source = SessionsSource(ApiSettings(base_url="http://127.0.0.1:9/v1", api_key="sk-test"),
                            transport=httpx.MockTransport(handler))

    async def go() -> None:
        result = await source.poll("sess_1", lambda _: False)
        assert result.outcome == "ok" and result.complete and [r.id for r in result.runs] == ["turn_1"]
        await source.aclose()

    asyncio.run(go())
    assert [r.url.path for r in seen] == ["/v1/agents/sessions/sess_1/turns"]
    assert seen[0].headers["OpenAI-Beta"] == "agents=v1"
    assert dict(seen[0].url.params) == {"order": "desc", "limit": "100"}


def test_a_steady_state_poll_is_one_request(sim: tuple[Simulator, FakeClock]) -> None:
    s, clock = sim
    sid = s.sessions.create_session(agent_id="agent_a")
    for i in range(250):
        s.sessions.create_turn(sid, [("queued", 1), ("in_progress", 2), ("completed", 0)])
        if i % 5 == 4:
            clock.advance(1)
    clock.advance(10)
    live = s.sessions.create_turn(sid, [("queued", 2), ("in_progress", 1), ("waiting", 30), ("in_progress", 1),
                                        ("failed", 0)], error_code="rate_limit_exceeded",
                                  input_tokens=11, output_tokens=4)
    requests: list[tuple[str, str]] = []
    source = _source(s, requests)
    tracker = Tracker((), 3600.0)

    async def poll() -> int:
        before = len(requests)
        result = await source.poll(sid, lambda seen: tracker.should_stop(sid, seen))
        assert result.outcome == "ok"
        tracker.observe_listing(sid, result.runs, clock.now(), complete=result.complete, ok=True)
        return len(requests) - before

    async def go() -> None:
        assert await poll() == 3  # the first poll reads all 251 turns
        assert tracker.runs[live].status == "queued"
        clock.advance(4)
        assert await poll() == 1
        assert tracker.runs[live].status == "requires_action"  # waiting
        clock.advance(40)
        assert await poll() == 1
        await source.aclose()

    asyncio.run(go())
    assert set(requests) == {(LIST_TURNS, "200")}
    failed = tracker.runs[live]
    assert failed.status == "failed" and failed.source == "sessions"
    assert tracker.aggregates.counters[("assistants_run_errors_total", ("rate_limit_exceeded", "sessions"))] == 1
    assert tracker.aggregates.counters[("assistants_run_tokens_total", ("prompt", "sessions"))] == 11
    # Queued time is exact: started_at - created_at from the API.
    queued = tracker.aggregates.histograms[("assistants_run_status_duration_seconds", ("queued", "sessions"))]
    assert queued.sum == 2 and queued.count == 1
    # History (the 250 turns finished before the first poll) was never counted.
    finished = {k: v for k, v in tracker.aggregates.counters.items() if k[0] == "assistants_runs_finished_total"}
    assert finished == {("assistants_runs_finished_total", ("failed", "sessions")): 1}


def test_a_deleted_session_is_gone(sim: tuple[Simulator, FakeClock]) -> None:
    s, _ = sim
    sid = s.sessions.create_session()
    s.sessions.delete_session(sid)
    requests: list[tuple[str, str]] = []
    source = _source(s, requests)

    async def go() -> None:
        result = await source.poll(sid, lambda _: False)
        assert result.outcome == "gone" and result.api_reached
        await source.aclose()

    asyncio.run(go())
    assert requests == [(LIST_TURNS, "404")]


# --- discovery ------------------------------------------------------------------------------------------


def test_discovery_walks_down_to_the_lookback_then_to_known_sessions(sim: tuple[Simulator, FakeClock]) -> None:
    s, clock = sim
    old = s.sessions.create_session()
    clock.advance(3600)
    recent = []
    for _ in range(150):
        recent.append(s.sessions.create_session(agent_id="agent_a"))
        clock.advance(1)
    requests: list[tuple[str, str]] = []
    discovery = SessionDiscovery(_source(s, requests), lookback=1800, clock=clock.now)
    known: set[str] = set()

    async def go() -> list[str]:
        result = await discovery.discover(lambda sid: sid in known)
        await discovery.source.aclose()  # the client belongs to this event loop
        assert result.api_reached and result.error is None
        known.update(sid for sid, _ in result.scopes)
        return [sid for sid, _ in result.scopes]

    assert asyncio.run(go()) == recent[::-1]  # newest first, down to the lookback: `old` is not watched
    assert old not in known and len(requests) == 2
    newer = s.sessions.create_session(agent_id="agent_b")
    requests.clear()
    assert asyncio.run(go()) == [newer]
    assert requests == [(LIST_SESSIONS, "200")]  # it stopped at the first known session


async def _discover_once(discovery: SessionDiscovery) -> DiscoveryResult:
    try:
        return await discovery.discover(lambda _: False)
    finally:
        await discovery.source.aclose()


def test_discovery_filters_by_each_agent_id(sim: tuple[Simulator, FakeClock]) -> None:
    s, clock = sim
    a = s.sessions.create_session(agent_id="agent_a")
    b = s.sessions.create_session(agent_id="agent_b")
    s.sessions.create_session(agent_id="agent_c")
    requests: list[tuple[str, str]] = []
    discovery = SessionDiscovery(_source(s, requests), lookback=60, agent_ids=["agent_a", "agent_b", "agent_a"],
                                 clock=clock.now)
    result = asyncio.run(_discover_once(discovery))
    assert sorted(sid for sid, _ in result.scopes) == sorted([a, b])
    assert len(requests) == 2  # one pass per distinct agent


def test_discovery_counts_malformed_sessions(sim: tuple[Simulator, FakeClock]) -> None:
    s, clock = sim
    for _ in range(30):
        s.sessions.create_session()
    s.faults.malformed_rate = 0.5
    discovery = SessionDiscovery(_source(s, []), lookback=60, clock=clock.now)
    result = asyncio.run(_discover_once(discovery))
    assert sum(result.invalid.values()) > 0
    assert len(result.scopes) + result.invalid.get("wrong_type", 0) + result.invalid.get("not_object", 0) == 30


# --- configuration --------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}


def test_sessions_need_a_key_and_nothing_else(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="API key is required"):
        load_config(["--source", "sessions"], env)
    config = load_config(["--source", "sessions", "--agent-id", "agent_a", "--agent-id", "agent_b"],
                         {**env, "OPENAI_API_KEY": "sk-test"})
    assert config.sources == ("sessions",) and config.calls_api
    assert config.options(SPEC).agent_ids == ("agent_a", "agent_b")


def test_agent_id_without_the_sessions_source_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"--agent-id.*needs --source sessions"):
        load_config(["--thread", "thread_a", "--agent-id", "agent_a"], {**env, "OPENAI_API_KEY": "sk-test"})
    with pytest.raises(ConfigError, match="invalid agent id"):
        load_config(["--source", "sessions", "--agent-id", "a/b"], {**env, "OPENAI_API_KEY": "sk-test"})
