"""The rule for strings from outside: a lone surrogate (JSON "\\ud800") or a value over 256 characters in any
id, label value or reason makes its item invalid and counted (bad_string, too_long) at every entry point,
its neighbours are applied, /metrics renders, the state file commits and a restart loads it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import ConfigError, load_config, parse_threads
from exporter.metrics import ExporterState, SnapshotCollector, build_families
from exporter.model import (
    REASON_BAD_STRING,
    REASON_TOO_LONG,
    parse_response,
    parse_run,
    parse_turn,
    string_problem,
    thread_id_problem,
)
from exporter.sources.assistants import parse_page
from exporter.sources.foundry import parse_threads_page
from exporter.sources.responses import parse_responses_page as parse_listing
from exporter.sources.webhooks import parse_event
from exporter.store import Store
from tests.test_push import AUTH, NOW, Running

pytestmark = pytest.mark.anyio

SURROGATE = "x\ud800y"
HUGE = "a" * 200_000
GOOD = {"id": "run_ok", "thread_id": "thread_1", "status": "completed", "created_at": 100, "completed_at": 110}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(("value", "reason"), [
    ("plain", None), ("é ✓ \U0010ffff", None), ("x" * 256, None), ("x" * 257, REASON_TOO_LONG),
    (HUGE, REASON_TOO_LONG), (SURROGATE, REASON_BAD_STRING), ("\udfff", REASON_BAD_STRING),
])
def test_string_problem(value: str, reason: str | None) -> None:
    assert string_problem(value) == reason


@pytest.mark.parametrize("field", ["id", "thread_id", "assistant_id", "model", "last_error", "incomplete_details"])
@pytest.mark.parametrize(("value", "reason"), [(SURROGATE, REASON_BAD_STRING), (HUGE, REASON_TOO_LONG)])
def test_every_string_of_a_run_is_checked(field: str, value: str, reason: str) -> None:
    nested = {"last_error": "code", "incomplete_details": "reason"}
    item = {**GOOD, field: {nested[field]: value} if field in nested else value}
    result = parse_run(item, "thread_1")
    assert (result.snapshot, result.invalid_reason) == (None, reason)


@pytest.mark.parametrize(("value", "reason"), [(SURROGATE, REASON_BAD_STRING), (HUGE, REASON_TOO_LONG)])
def test_responses_and_turns_are_checked(value: str, reason: str) -> None:
    response = {"id": "resp_1", "object": "response", "status": "failed", "created_at": 1, "model": value}
    assert parse_response(response, "responses").invalid_reason == reason
    assert parse_response({**response, "model": "m", "error": {"code": value}}, "responses").invalid_reason == reason
    turn = {"id": "turn_1", "status": "completed", "created_at": 1, "agent_id": value}
    assert parse_turn(turn, "sess_1").invalid_reason == reason
    assert parse_turn({**turn, "agent_id": "a", "session_id": value}, "sess_1").invalid_reason == reason


def test_a_listing_page_counts_the_bad_item_and_keeps_its_neighbours() -> None:
    body = json.dumps({"data": [{**GOOD, "id": SURROGATE}, {**GOOD, "assistant_id": HUGE}, GOOD],
                       "has_more": False}).encode()
    page = parse_page(body, "thread_1")
    assert page is not None and [r.id for r in page.items] == ["run_ok"]
    assert page.invalid == {REASON_BAD_STRING: 1, REASON_TOO_LONG: 1}


def test_discovery_listings_refuse_bad_ids() -> None:
    assert thread_id_problem(SURROGATE) is not None and thread_id_problem(HUGE) is not None
    threads = json.dumps({"data": [{"id": SURROGATE, "created_at": 1}, {"id": HUGE, "created_at": 1},
                                   {"id": "thread_ok", "created_at": 1}], "has_more": False}).encode()
    page = parse_threads_page(threads)
    assert page is not None and [t.id for t in page.items] == ["thread_ok"]
    assert page.invalid == {REASON_BAD_STRING: 1, REASON_TOO_LONG: 1}
    responses = json.dumps({"data": [{"id": SURROGATE, "created_at": 1}, {"id": "resp_ok", "created_at": 1}],
                            "has_more": False}).encode()
    listing = parse_listing(responses)
    assert listing is not None and [r.id for r in listing.items] == ["resp_ok"]
    assert listing.invalid == {REASON_BAD_STRING: 1}


def test_a_webhook_with_a_bad_data_id_is_not_an_event() -> None:
    for bad in (SURROGATE, HUGE):
        body = json.dumps({"type": "response.completed", "created_at": 5, "data": {"id": bad}}).encode()
        assert parse_event(body) is None  # counted as malformed by the receiver
    ok = json.dumps({"type": "response.completed", "created_at": 5, "data": {"id": "resp_1"}}).encode()
    assert parse_event(ok) is not None


def test_threads_file_lines_with_bad_strings_are_invalid_lines() -> None:
    data = "thread_a\n" + SURROGATE + "\n" + HUGE + "\nthread_b\n"
    parsed = parse_threads(data)
    assert parsed.ids == ("thread_a", "thread_b") and [n for n, _ in parsed.invalid] == [2, 3]
    raw = b"thread_a\nthr\xffead\nthread_b\n"
    assert parse_threads(raw).ids == ("thread_a", "thread_b")


@pytest.mark.parametrize("yaml_text", ['threads: ["a\\ud800"]\n', 'state_file: "/tmp/a\\ud800b"\n',
                                       'push_token_file: "/tmp/\\udcff"\n', 'api_key_file: "\\ud800"\n'])
def test_a_surrogate_in_yaml_is_a_one_line_config_error(tmp_path: Path, yaml_text: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match="valid UTF-8") as caught:
        load_config(["--config", str(config), "--demo"], {"HOME": str(tmp_path)})
    assert "\n" not in str(caught.value)


def test_a_surrogate_in_env_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid UTF-8"):
        load_config(["--demo"], {"HOME": str(tmp_path), "ASSISTANTS_EXPORTER_STATE_FILE": "/tmp/s\udcff.db"})


@pytest.mark.parametrize("args", [["--thread", b"thr\xffead"], ["--state-file", b"/tmp/x\xff/s.db"]])
def test_undecodable_argv_exits_2_with_one_line(tmp_path: Path, args: list[object]) -> None:
    argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    done = subprocess.run([sys.executable.encode(), b"-m", b"exporter", *argv, b"--demo"], capture_output=True,
                          timeout=60, cwd=Path(__file__).parent.parent, env={"HOME": str(tmp_path)}, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and "valid UTF-8" in lines[0] and "Traceback" not in lines[0]


# -- over HTTP, with the daemon committing ---------------------------------------------------------


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    r = Running(tmp_path)
    r.receiver.max_body = 1 << 20
    stop = asyncio.Event()
    task = asyncio.create_task(r.daemon.run(stop))
    yield r
    stop.set()
    await asyncio.wait_for(task, 10)
    await r.client.aclose()


def _page(r: Running) -> bytes:
    collector = SnapshotCollector()
    collector.update(build_families(r.tracker, ExporterState(), NOW, ("push",), ("push",)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


async def test_a_push_with_bad_strings_counts_them_and_commits_the_neighbours(running: Running) -> None:
    done = {"status": "completed", "created_at": int(NOW) - 5, "completed_at": int(NOW) - 1}
    failed = {"status": "failed", "created_at": int(NOW) - 5, "failed_at": int(NOW) - 1}
    body = json.dumps([
        {"id": SURROGATE, **done},
        {"id": "r_asst", "assistant_id": SURROGATE, **done},
        {"id": "r_huge", "assistant_id": HUGE, **done},
        {"id": "r_model", "model": "m\udfff", **done},
        {"id": "r_code", "last_error": {"code": SURROGATE}, **failed},
        {"id": "r_reason", "status": "incomplete", "created_at": 1, "incomplete_details": {"reason": SURROGATE}},
        {"id": "r_thread", "thread_id": SURROGATE, **done},
        {"id": "ok2", "assistant_id": "asst", **done},
    ])
    answer = await running.client.post("/api/v1/runs", content=body,
                                       headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    reasons = {entry["index"]: entry["reason"] for entry in answer.json()["invalid"]}
    assert reasons == {0: REASON_BAD_STRING, 1: REASON_BAD_STRING, 2: REASON_TOO_LONG, 3: REASON_BAD_STRING,
                       4: REASON_BAD_STRING, 5: REASON_BAD_STRING, 6: REASON_BAD_STRING}
    assert answer.json()["accepted"] == 1
    page = _page(running)
    assert b'assistant_id="asst"' in page and len(page) < 200_000
    # Committed: a restart loads the neighbour.
    loaded = Store(running.daemon.store.path, ["assistant_id"]).load()
    assert loaded.aggregates.counter("assistants_runs_finished_total", ("completed", "push", "asst")) == 1


@pytest.mark.parametrize("path", ["/api/v1/threads/thr%FFead", "/api/v1/threads/%ED%A0%80",
                                  "/api/v1/threads/" + "a" * 300, "/api/v1/threads/a%C3"])
async def test_registration_paths_that_are_not_utf8_or_too_long_are_400(running: Running, path: str) -> None:
    for method in ("PUT", "DELETE"):
        answer = await running.client.request(method, path, headers=AUTH)
        assert answer.status_code == 400, (method, answer.text)
    ok = await running.client.put("/api/v1/threads/thr%C3%A9ad", headers=AUTH)
    assert ok.status_code == 200 and ok.json()["thread_id"] == "thréad"


def test_deep_nesting_in_a_listing_is_a_malformed_page_not_a_crash() -> None:
    """Regression: the Foundry threads listing let RecursionError out of json.loads."""
    deep = b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert parse_threads_page(deep) is None
    assert parse_threads_page(b"[" * 100_000) is None
    assert parse_page(deep, "thread_1") is None
    assert parse_listing(deep) is None


def test_a_cursor_with_a_surrogate_is_a_malformed_page_unless_the_list_ends() -> None:
    body = json.dumps({"data": [GOOD], "has_more": True, "last_id": SURROGATE}).encode()
    assert parse_page(body, "thread_1") is None  # more pages, but no cursor a query string can carry
    assert parse_threads_page(body) is None
    assert parse_listing(body) is None
    last = json.dumps({"data": [GOOD], "has_more": False, "last_id": SURROGATE}).encode()
    page = parse_page(last, "thread_1")
    assert page is not None and page.cursor is None and [r.id for r in page.items] == ["run_ok"]
