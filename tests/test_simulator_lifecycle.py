"""Lifecycle invariants, scripted plans, ground truth, scenario shapes and determinism (FakeClock only)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import httpx
import pytest

from exporter.simulator import SCENARIOS, FakeClock, Simulator
from exporter.simulator.engine import Engine
from exporter.statuses import TERMINAL
from tests.helpers import wait_until
from tests.simulator_support import client

Run = dict[str, Any]
STAMPS = ("created_at", "started_at", "cancelled_at", "failed_at", "completed_at")
END_FIELD = {
    "completed": "completed_at",
    "incomplete": "completed_at",
    "failed": "failed_at",
    "cancelled": "cancelled_at",
}
EDGES = {
    ("queued", "in_progress"),
    ("queued", "cancelling"),
    ("in_progress", "requires_action"),
    ("requires_action", "in_progress"),
    ("requires_action", "expired"),
    ("requires_action", "cancelling"),
    ("in_progress", "cancelling"),
    ("cancelling", "cancelled"),
    *{("in_progress", end) for end in ("completed", "failed", "incomplete")},
}


def _engine(scenario: str, seed: int = 7, speed: float = 10.0) -> tuple[Engine, FakeClock]:
    clock = FakeClock()
    return Simulator(scenario=scenario, seed=seed, clock=clock, speed=speed).engine, clock


def _check_run_shape(run: Run, now: float) -> None:
    status = run["status"]
    assert (run["usage"] is None) == (status not in TERMINAL)
    assert (run["required_action"] is not None) == (status == "requires_action")
    assert (run["last_error"] is not None) == (status == "failed")
    assert (run["incomplete_details"] is not None) == (status == "incomplete")
    if status in ("queued",):
        assert run["started_at"] is None
    if status in ("in_progress", "requires_action", "completed", "failed", "incomplete", "expired"):
        assert run["started_at"] is not None
    if status in TERMINAL and status != "expired":
        assert run["expires_at"] is None
    else:
        assert run["expires_at"] is not None
    if status == "requires_action":
        assert now < run["expires_at"]  # past expires_at it must have expired
    for end_status, field in END_FIELD.items():
        if status == end_status:
            assert run[field] is not None and run[field] >= (run["started_at"] or run["created_at"])
    set_ends = {f for f in ("cancelled_at", "failed_at", "completed_at") if run[f] is not None}
    assert set_ends == ({END_FIELD[status]} if status in END_FIELD else set())
    if run["started_at"] is not None:
        assert run["started_at"] >= run["created_at"]


def _check_step(prev: dict[str, Run], cur: dict[str, Run], now: float) -> None:
    for rid, run in cur.items():
        _check_run_shape(run, now)
        old = prev.get(rid)
        if old is None:
            continue
        if old["status"] in TERMINAL:
            assert run == old, "a terminal run changed"
            continue
        for field in STAMPS:
            if old[field] is not None:
                assert run[field] == old[field], f"{field} changed"
        if run["status"] not in TERMINAL or run["status"] == "expired":
            assert run["expires_at"] == old["expires_at"]


def _check_history(engine: Engine, run: Run) -> None:
    history = engine.history(run["id"])
    times = [t for _, t in history]
    assert times == sorted(times), "transitions went back in time"
    statuses = [s for s, _ in history]
    assert statuses[0] in ("queued", "in_progress")
    for edge in itertools.pairwise(statuses):
        assert edge in EDGES, edge
    first_start = next((t for s, t in history if s == "in_progress"), None)
    assert run["started_at"] == (None if first_start is None else int(first_start))
    if run["status"] == "expired":
        assert statuses[-2] == "requires_action"
        assert history[-1][1] >= run["expires_at"]


def _check_truth(engine: Engine, runs: list[Run]) -> None:
    truth = engine.truth()
    assert truth.by_status == dict(Counter(r["status"] for r in runs))
    ended = [r for r in runs if r["status"] in TERMINAL]
    assert truth.finished == dict(Counter(r["status"] for r in ended))
    assert truth.error_codes == dict(Counter(r["last_error"]["code"] for r in ended if r["last_error"]))
    assert truth.incomplete_reasons == dict(
        Counter(r["incomplete_details"]["reason"] for r in ended if r["incomplete_details"])
    )
    assert truth.tokens == {
        "prompt": sum(r["usage"]["prompt_tokens"] for r in ended),
        "completion": sum(r["usage"]["completion_tokens"] for r in ended),
    }
    started = [r["started_at"] - r["created_at"] for r in runs if r["started_at"] is not None]
    assert truth.queued_seconds == sorted(started)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lifecycle_invariants(scenario: str) -> None:
    engine, clock = _engine(scenario)
    prev: dict[str, Run] = {}
    seen: set[str] = set()
    steps = 25 if scenario == "history" else 130  # expiry after 60 s at speed 10
    for _ in range(steps):
        clock.advance(0.7)
        now = clock.now()
        runs = engine.runs()
        cur = {r["id"]: r for r in runs}
        assert len(cur) == len(runs), "duplicate run ids"
        assert set(prev) <= set(cur), "a run disappeared"
        _check_step(prev, cur, now)
        seen.update(r["status"] for r in runs)
        prev = cur
    _check_truth(engine, list(prev.values()))
    for run in prev.values():
        if run["status"] != "completed" or scenario != "history":  # 4500 histories are slow to check
            _check_history(engine, run)
    assert any(r["status"] not in TERMINAL for r in prev.values())
    if scenario == "steady":
        assert {
            "queued",
            "in_progress",
            "requires_action",
            "completed",
            "failed",
            "incomplete",
            "cancelled",
            "expired",
        } <= seen


def test_scripted_plan_exact_timestamps() -> None:
    engine, clock = _engine("steady", speed=50.0)  # a scripted plan ignores speed
    engine.set_workload(False)
    tid = engine.create_thread()
    t0 = int(clock.now())
    plan = [("queued", 2), ("in_progress", 3), ("requires_action", 1), ("in_progress", 2), ("completed", 0)]
    rid = engine.create_run(tid, plan, assistant_id="asst_a", model="gpt-x", prompt_tokens=7, completion_tokens=3)

    def run() -> Run:
        return next(r for r in engine.runs() if r["id"] == rid)

    expected = {1: "queued", 2: "in_progress", 4: "in_progress", 5: "requires_action", 6: "in_progress", 8: "completed"}
    seen = {}
    for second in range(1, 10):
        clock.set(t0 + second)
        seen[second] = run()
        if second in expected:
            assert seen[second]["status"] == expected[second], second
    assert seen[1]["started_at"] is None and seen[1]["expires_at"] == t0 + 12  # 600 s / speed 50
    assert seen[2]["started_at"] == t0 + 2
    assert seen[5]["required_action"]["submit_tool_outputs"]["tool_calls"]
    final = seen[9]
    assert final["completed_at"] == t0 + 8
    assert final["started_at"] == t0 + 2
    assert final["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert final["expires_at"] is None
    assert (final["assistant_id"], final["model"]) == ("asst_a", "gpt-x")
    assert [s for s, _ in engine.history(rid)] == [s for s, _ in plan]


def test_scripted_failed_incomplete_expired_and_validation() -> None:
    engine, clock = _engine("steady", speed=1.0)
    engine.set_workload(False)
    tid = engine.create_thread()
    t0 = int(clock.now())
    failed = engine.create_run(tid, [("in_progress", 1), ("failed", 0)], error_code="rate_limit_exceeded")
    incomplete = engine.create_run(tid, [("in_progress", 1), ("incomplete", 0)], incomplete_reason="max_prompt_tokens")
    expiring = engine.create_run(tid, [("in_progress", 1), ("requires_action", 10), ("expired", 0)], expires_in=30)
    late = engine.create_run(
        tid, [("in_progress", 1), ("requires_action", 100), ("in_progress", 1), ("completed", 0)], expires_in=50
    )
    clock.advance(200)
    runs = {r["id"]: r for r in engine.runs()}
    assert runs[failed]["last_error"]["code"] == "rate_limit_exceeded" and runs[failed]["failed_at"] == t0 + 1
    assert runs[incomplete]["incomplete_details"] == {"reason": "max_prompt_tokens"}
    assert runs[incomplete]["completed_at"] == t0 + 1
    assert runs[expiring]["status"] == "expired" and runs[expiring]["expires_at"] == t0 + 30
    # A tool pause longer than the expiry window expires too.
    assert runs[late]["status"] == "expired" and engine.history(late)[-1] == ("expired", t0 + 50)
    for bad in (
        [],
        [("queued", 1)],
        [("completed", 0), ("queued", 1)],
        [("in_progress", 1), ("expired", 0)],
        [("in_progress", -1), ("completed", 0)],
        [("paused", 1), ("completed", 0)],
        [("in_progress", 1), ("cancelled", 0)],
    ):
        with pytest.raises(ValueError):
            engine.create_run(tid, bad)
    with pytest.raises(ValueError):
        engine.create_run(tid, [("in_progress", 1), ("failed", 0)], error_code="nope")


def test_cancel_and_submit_through_http() -> None:
    clock = FakeClock()
    with Simulator(seed=1, clock=clock, speed=2.0) as sim, client(sim) as http:
        sim.engine.set_workload(False)
        tid = sim.engine.create_thread()
        rid = sim.engine.create_run(tid, [("queued", 5), ("in_progress", 5), ("completed", 0)])
        resp = http.post(f"/threads/{tid}/runs/{rid}/cancel")
        assert resp.json()["status"] == "cancelling"
        clock.advance(0.5)  # cancelling lasts 1 s / speed
        run = http.get(f"/threads/{tid}/runs/{rid}").json()
        assert run["status"] == "cancelled" and run["started_at"] is None
        assert run["cancelled_at"] == int(clock.now())
        again = http.post(f"/threads/{tid}/runs/{rid}/cancel")
        assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]

        waiting = sim.engine.create_run(tid, [("in_progress", 1), ("requires_action", 100), ("expired", 0)])
        early = http.post(f"/threads/{tid}/runs/{waiting}/submit_tool_outputs", json={"tool_outputs": []})
        assert early.status_code == 400  # still in_progress
        clock.advance(1)
        run = http.get(f"/threads/{tid}/runs/{waiting}").json()
        calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
        wrong = http.post(f"/threads/{tid}/runs/{waiting}/submit_tool_outputs", json={"tool_outputs": []})
        assert wrong.status_code == 400
        outputs = [{"tool_call_id": c["id"], "output": "x"} for c in calls]
        ok = http.post(f"/threads/{tid}/runs/{waiting}/submit_tool_outputs", json={"tool_outputs": outputs})
        assert ok.json()["status"] == "in_progress" and ok.json()["required_action"] is None
        clock.advance(60)
        assert http.get(f"/threads/{tid}/runs/{waiting}").json()["status"] == "completed"

        created = http.post(f"/threads/{tid}/runs", json={"assistant_id": "asst_research"}).json()
        assert created["model"] == "gpt-4.1" and created["status"] in ("queued", "in_progress")
        assert created["expires_at"] == created["created_at"] + 300


def test_truth_since_workload_control_delete_and_eviction() -> None:
    engine, clock = _engine("steady", speed=1.0)
    engine.set_workload(False)
    before = len(engine.runs())
    clock.advance(120)
    assert len(engine.runs()) == before  # no arrivals while paused
    tid = engine.create_thread()
    t0 = int(clock.now())
    engine.create_run(tid, [("queued", 3), ("in_progress", 2), ("completed", 0)], prompt_tokens=10)
    clock.advance(10)
    engine.create_run(tid, [("queued", 1), ("in_progress", 2), ("failed", 0)], error_code="invalid_prompt")
    clock.advance(10)
    truth = engine.truth(since=t0 + 6)
    assert truth.finished == {"failed": 1}
    assert truth.error_codes == {"invalid_prompt": 1}
    assert truth.queued_seconds == [1]
    assert engine.truth(since=t0).finished["completed"] >= 1

    engine.max_runs_per_thread = 1
    clock.advance(1)
    assert sum(r["thread_id"] == tid for r in engine.runs()) == 1  # the older terminal run was dropped
    assert engine.truth(since=t0).finished == {"completed": 1, "failed": 1}  # but still counted
    engine.max_runs_per_thread = 5000

    engine.set_workload(True)
    clock.advance(60)
    assert len(engine.runs()) > before + 1
    engine.delete_thread(tid)
    assert all(r["thread_id"] != tid for r in engine.runs())
    assert engine.truth(since=t0).finished.get("failed") == 1


def test_deleted_thread_is_404_over_http() -> None:
    with Simulator(seed=0, clock=FakeClock()) as sim, client(sim) as http:
        tid = sim.thread_ids()[0]
        assert http.get(f"/threads/{tid}/runs").status_code == 200
        sim.engine.delete_thread(tid)
        resp = http.get(f"/threads/{tid}/runs")
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == f"No thread found with id '{tid}'."
        assert tid not in sim.thread_ids()


def _failure_share(runs: list[Run], lo: float, hi: float) -> float:
    window = [r for r in runs if lo <= r["created_at"] < hi and r["status"] in TERMINAL]
    return sum(r["status"] == "failed" for r in window) / max(1, len(window))


def test_failure_spike_scales_with_speed() -> None:
    engine, clock = _engine("failure-spike", seed=5, speed=20.0)
    t0 = clock.now()
    clock.advance(70)  # spike from 15 s to 45 s at speed 20
    runs = engine.runs()
    assert _failure_share(runs, t0, t0 + 14) < 0.1
    assert _failure_share(runs, t0 + 16, t0 + 44) > 0.2
    assert _failure_share(runs, t0 + 46, t0 + 65) < 0.1


def test_backlog_grows_then_drains() -> None:
    engine, clock = _engine("backlog", seed=5, speed=10.0)
    clock.advance(30)  # end of the overload phase (300 s at speed 10)
    peak = engine.truth().by_status.get("queued", 0)
    clock.advance(60)
    drained = engine.truth().by_status.get("queued", 0)
    assert peak >= 15
    assert drained < peak / 3
    assert max(engine.truth().queued_seconds) > 10


def test_expiry_scenario_expires_runs() -> None:
    engine, clock = _engine("expiry", seed=5, speed=10.0)
    clock.advance(200)
    truth = engine.truth()
    assert truth.finished.get("expired", 0) > 2 * truth.finished.get("completed", 0) > 0


def test_history_scenario_has_thousands_of_old_runs() -> None:
    engine, clock = _engine("history", seed=5, speed=1.0)
    t0 = clock.now()
    per_thread = Counter(r["thread_id"] for r in engine.runs() if r["created_at"] < t0)
    assert sorted(per_thread.values()) == [1500, 1500, 1500]
    clock.advance(120)
    assert any(r["created_at"] >= t0 for r in engine.runs())  # the light live workload


def _fingerprint(engine: Engine, clock: FakeClock, steps: list[float]) -> str:
    for step in steps:
        clock.advance(step)
        engine.now()
    return json.dumps(engine.runs(), sort_keys=True)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_seed_same_steps_same_runs(scenario: str) -> None:
    steps = [0.5, 1.5, 3.0, 0.25] * 10
    a = _fingerprint(*_engine(scenario, seed=42), steps)
    b = _fingerprint(*_engine(scenario, seed=42), steps)
    assert a == b
    # Observing less often changes nothing: the plans fix every transition time.
    c = _fingerprint(*_engine(scenario, seed=42), [sum(steps)])
    assert a == c
    assert a != _fingerprint(*_engine(scenario, seed=43), steps)


def test_http_is_deterministic_too() -> None:
    def listing(seed: int) -> list[Run]:
        clock = FakeClock()
        with (
            Simulator(seed=seed, clock=clock, speed=5.0) as sim,
            httpx.Client(
                base_url=sim.base_url, headers={"Authorization": "Bearer k", "OpenAI-Beta": "assistants=v2"}
            ) as http,
        ):
            clock.advance(30)
            out: list[Run] = http.get(f"/threads/{sim.thread_ids()[0]}/runs", params={"limit": 100}).json()["data"]
            return out

    assert listing(9) == listing(9)


def test_wall_clock_mode_moves_by_itself() -> None:
    # speed 200: a run is queued ~7 ms and works ~30 ms, so runs finish within a fraction of a second.
    with Simulator(seed=1, speed=200.0) as sim, client(sim) as http:
        tid = sim.thread_ids()[0]

        def finished_runs() -> list[Run]:
            data: list[Run] = http.get(f"/threads/{tid}/runs", params={"limit": 100}).json()["data"]
            return [r for r in data if r["status"] in TERMINAL]

        wait_until(finished_runs, timeout=15.0, what="a finished run on the wall clock")
        assert sim.engine.truth().finished


def test_truth_times_the_queue_of_a_run_cancelled_before_it_started() -> None:
    engine, clock = _engine("steady")
    engine.set_workload(False)
    thread = engine.create_thread()
    engine.create_run(thread, [("queued", 2.5), ("cancelling", 1.0), ("cancelled", 0.0)])
    engine.create_run(thread, [("queued", 1.0), ("in_progress", 1.0), ("completed", 0.0)])
    clock.advance(10)
    truth = engine.truth()
    assert truth.finished == {"cancelled": 1, "completed": 1}
    assert truth.queued_unstarted == [2.5] and len(truth.queued_seconds) == 1
