"""The official openai SDK talks to the simulator: pagination, retrieval, retries, writes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import openai
import pytest

from exporter.simulator import FakeClock, Simulator

# The SDK marks the Assistants API deprecated; that is not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def big_thread() -> Iterator[tuple[Simulator, str, list[str]]]:
    """A 1,000-run thread (three runs share each created_at second, so ties are broken by id)."""
    clock = FakeClock()
    with Simulator(seed=11, clock=clock) as sim:
        sim.engine.set_workload(False)
        tid = sim.engine.create_thread()
        for i in range(1000):
            sim.engine.create_run(tid, [("queued", 1), ("in_progress", 2), ("completed", 0)])
            if i % 3 == 2:
                clock.advance(1)
        runs = [r for r in sim.engine.runs() if r["thread_id"] == tid]
        expected = [r["id"] for r in sorted(runs, key=lambda r: (r["created_at"], r["id"]))]
        yield sim, tid, expected


def _client(sim: Simulator, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=max_retries)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_auto_pagination_lists_every_run(big_thread: tuple[Simulator, str, list[str]], order: str) -> None:
    sim, tid, expected = big_thread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listed = [run.id for run in _client(sim).beta.threads.runs.list(tid, limit=100, order=order)]
    assert len(listed) == 1000
    assert len(set(listed)) == 1000
    assert listed == (expected if order == "asc" else expected[::-1])
    # The SDK sent `OpenAI-Beta: assistants=v2` by itself: the simulator answers 400 without it.


def test_first_page_and_retrieve(big_thread: tuple[Simulator, str, list[str]]) -> None:
    sim, tid, expected = big_thread
    client = _client(sim)
    page = client.beta.threads.runs.list(tid, limit=100)
    assert page.has_more is True
    assert [r.id for r in page.data] == expected[::-1][:100]
    run = client.beta.threads.runs.retrieve(expected[0], thread_id=tid)
    assert run.id == expected[0]
    assert run.thread_id == tid
    assert run.status == "completed"
    assert run.usage is not None and run.usage.total_tokens == 150
    assert run.started_at == run.created_at + 1
    assert run.completed_at == run.created_at + 3
    assert run.expires_at is None


def test_sdk_retries_forced_429_and_500(big_thread: tuple[Simulator, str, list[str]]) -> None:
    sim, tid, expected = big_thread
    sim.faults.forced_retry_after_ms = 5
    sim.faults.force_status = [429, 429]
    run = _client(sim, max_retries=3).beta.threads.runs.retrieve(expected[1], thread_id=tid)
    assert run.id == expected[1]
    assert sim.faults.force_status == []

    sim.faults.force_status = [429]
    with pytest.raises(openai.RateLimitError) as info:
        _client(sim, max_retries=0).beta.threads.runs.retrieve(expected[1], thread_id=tid)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"

    sim.faults.force_status = [500]
    # A 500 carries no retry-after, so the SDK backs off ~0.5 s by itself before succeeding.
    run = _client(sim, max_retries=2).beta.threads.runs.retrieve(expected[2], thread_id=tid)
    assert run.id == expected[2]


def test_sdk_errors_map_to_exceptions(big_thread: tuple[Simulator, str, list[str]]) -> None:
    sim, tid, _ = big_thread
    with pytest.raises(openai.NotFoundError):
        _client(sim).beta.threads.runs.list("thread_missing")
    with pytest.raises(openai.BadRequestError):
        _client(sim).beta.threads.runs.list(tid, extra_query={"after": "run_missing"})
    bad_key = Simulator(seed=0, clock=FakeClock(), api_key="sk-right")
    with bad_key:
        client = openai.OpenAI(base_url=bad_key.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            client.beta.threads.runs.list(bad_key.thread_ids()[0])
        assert "sk-wrong" not in str(info.value)


def test_sdk_write_calls() -> None:
    clock = FakeClock()
    with Simulator(seed=2, clock=clock) as sim:
        sim.engine.set_workload(False)
        client = _client(sim)
        thread = client.beta.threads.create()
        run = client.beta.threads.runs.create(thread.id, assistant_id="asst_support")
        assert run.status in ("queued", "in_progress")
        assert run.model == "gpt-4o"
        cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
        assert cancelled.status == "cancelling"
        clock.advance(2)
        assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled"

        rid = sim.engine.create_run(
            thread.id, [("in_progress", 1), ("requires_action", 60), ("in_progress", 1), ("completed", 0)]
        )
        clock.advance(1)
        waiting = client.beta.threads.runs.retrieve(rid, thread_id=thread.id)
        assert waiting.status == "requires_action"
        assert waiting.required_action is not None
        calls = waiting.required_action.submit_tool_outputs.tool_calls
        resumed = client.beta.threads.runs.submit_tool_outputs(
            rid, thread_id=thread.id, tool_outputs=[{"tool_call_id": c.id, "output": "42"} for c in calls]
        )
        assert resumed.status == "in_progress"
        steps = client.beta.threads.runs.steps.list(rid, thread_id=thread.id)
        assert [s.run_id for s in steps.data] == [rid]
