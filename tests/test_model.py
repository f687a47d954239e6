"""Validation of run objects and ids from the network, and the status vocabulary."""

from __future__ import annotations

import pytest

from exporter import statuses
from exporter.model import parse_run, thread_id_problem

GOOD = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "failed", "created_at": 100,
        "started_at": 101, "failed_at": 110, "assistant_id": "asst_1", "model": "gpt-4o",
        "last_error": {"code": "server_error", "message": "boom"}, "incomplete_details": None,
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}


def test_a_good_run_object_becomes_a_snapshot() -> None:
    result = parse_run(GOOD)
    assert result.invalid_reason is None and result.snapshot is not None
    snap = result.snapshot
    assert (snap.id, snap.scope, snap.status, snap.created_at) == ("run_1", "thread_1", "failed", 100)
    assert (snap.error_code, snap.prompt_tokens, snap.completion_tokens) == ("server_error", 12, 3)
    assert snap.terminal and snap.ended_at() == 110


@pytest.mark.parametrize(
    ("item", "reason", "kept"),
    [
        ("not an object", "not_object", False),
        ([GOOD], "not_object", False),
        ({**GOOD, "id": None}, "missing_id", False),
        ({**GOOD, "id": 7}, "wrong_type", False),
        ({**GOOD, "id": "x" * 300}, "too_long", False),  # wrong_type before the rule for strings
        ({**GOOD, "id": "run\ud800"}, "bad_string", False),
        ({**GOOD, "assistant_id": "a" * 200_000}, "too_long", False),
        ({**GOOD, "model": "m\udfff"}, "bad_string", False),
        ({**GOOD, "thread_id": "t\ud800"}, "bad_string", False),
        ({**GOOD, "last_error": {"code": "c\ud800"}}, "bad_string", False),
        ({**GOOD, "incomplete_details": {"reason": "r" * 257}}, "too_long", False),
        ({**GOOD, "created_at": "yesterday"}, "wrong_type", False),
        ({**GOOD, "created_at": True}, "wrong_type", False),
        ({k: v for k, v in GOOD.items() if k != "created_at"}, "wrong_type", False),
        ({**GOOD, "usage": {"prompt_tokens": "many"}}, "wrong_type", False),
        ({k: v for k, v in GOOD.items() if k != "status"}, "missing_status", True),
        ({**GOOD, "status": "paused"}, "unknown_status", True),
        ({**GOOD, "status": 3}, "unknown_status", True),
    ],
)
def test_bad_items_are_skipped_or_downgraded_with_a_reason(item: object, reason: str, kept: bool) -> None:
    result = parse_run(item, "thread_1")
    assert result.invalid_reason == reason
    assert (result.snapshot is not None) == kept
    if kept:
        assert result.snapshot is not None and result.snapshot.status == "unknown"


def test_thread_id_falls_back_to_the_polled_thread() -> None:
    result = parse_run({**GOOD, "thread_id": None}, "thread_polled")
    assert result.snapshot is not None and result.snapshot.scope == "thread_polled"


def test_enum_names_and_api_spellings_normalize_to_the_eleven_statuses() -> None:
    assert len(statuses.ALL_STATUSES) == 11
    assert {statuses.normalize(name) for name in statuses.ENUM_NAMES} == set(statuses.ALL_STATUSES)
    assert statuses.normalize("Null") == statuses.normalize(None) == statuses.normalize("new_thing") == "unknown"
    assert statuses.normalize("InProgress") == statuses.normalize("in_progress") == "in_progress"
    assert set(statuses.TERMINAL_STATUSES) == {"completed", "failed", "cancelled", "incomplete", "expired"}


@pytest.mark.parametrize("good", ["thread_abc123", "thr_a:b@c+\u00e9", "x" * 256])
def test_good_thread_ids(good: str) -> None:
    assert thread_id_problem(good) is None


@pytest.mark.parametrize("bad", ["", None, 5, "a/b", "a\\b", ".", "..", "a b", "a?b", "a#b", "a%2Fb", "a\x00b",
                                 "a\x85b", "\ufeffthread_a", "a\u200bb", "x" * 257])
def test_bad_thread_ids(bad: object) -> None:
    assert thread_id_problem(bad) is not None


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400, 2**53 + 1])
@pytest.mark.parametrize("key", ["created_at", "completed_at"])
def test_non_finite_or_huge_numbers_are_wrong_type(key: str, value: float) -> None:
    # json.loads accepts NaN, Infinity, 1e999 and 400-digit integers; int(inf) used to raise OverflowError.
    obj = {"id": "run_1", "thread_id": "t", "status": "completed", "created_at": 1, "completed_at": 2, key: value}
    result = parse_run(obj)
    assert result.snapshot is None and result.invalid_reason == "wrong_type"


def test_largest_exact_integer_is_accepted() -> None:
    result = parse_run({"id": "run_1", "thread_id": "t", "status": "queued", "created_at": 2**53})
    assert result.snapshot is not None and result.snapshot.created_at == 2**53
