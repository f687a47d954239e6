"""LangGraph Agent Server objects as the exporter reads them (exporter/model_langgraph.py): strict ISO 8601
times, runs (status mapping, ends, every bad field counted by reason) and threads; and, fuzzed, that no value
a server can send makes them raise or go uncounted, nor the offset pager over any body."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import statuses
from exporter.model import (
    REASON_BAD_STRING,
    REASON_MALFORMED_PAGE,
    REASON_MISSING_ID,
    REASON_MISSING_STATUS,
    REASON_NOT_OBJECT,
    REASON_TOO_LONG,
    REASON_UNKNOWN_STATUS,
    REASON_WRONG_TYPE,
    snapshot_problem,
)
from exporter.model_langgraph import LANGGRAPH_STATUSES, item_key, parse_langgraph_run, parse_time, read_thread
from exporter.sources.langgraph import _parse_run
from exporter.sources.listing import page_by_offset, read_runs
from tests.test_fuzz import DROPPED, FUZZ, encode, hostile_strings, json_values, mutations
from tests.test_source_langgraph import T0, iso, run

# --- times --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("2026-12-03T23:04:08.947015+00:00", T0),
    ("2026-12-03T23:04:08Z", T0),
    ("2026-12-03 23:04:08.999999999Z", T0),  # fractions floor
    ("2026-12-04T01:04:08+02:00", T0),
    ("2026-12-03T21:04:08-0400", T0 + 2 * 3600),
])
def test_iso_times_are_read_as_whole_epoch_seconds(text: str, seconds: int) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("value", [
    "2026-12-03T23:04:08", "2026-02-31T00:00:00Z", "2026-12-03T24:00:00Z", "2026-12-03T23:04:08+24:00",
    "2026-12-03T23:04:08.1234567890Z", "\uff12\uff10\uff12\uff16-12-03T23:04:08Z", "2026-12-03T23:04:08Z\ud800",
    "now", "",
    "2026-12-03T23:04:08Z" + " " * 40, 1796339048, 1.5, float("nan"), None, True, ["2026-12-03T23:04:08Z"],
])
def test_anything_else_is_no_time(value: object) -> None:
    assert parse_time(value) is None


# --- runs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "status", "ended"), [
    ("pending", "queued", None), ("running", "in_progress", None), ("success", "completed", "completed_at"),
    ("error", "failed", "failed_at"), ("timeout", "expired", "expires_at"),
    ("interrupted", "cancelled", "cancelled_at"),
])
def test_run_statuses_map_onto_run_status_labels_and_updated_at_ends_a_finished_run(
        wire: str, status: str, ended: str | None) -> None:
    result = parse_langgraph_run(run(7, wire), "th-1")
    snap = result.snapshot
    assert result.invalid_reason is None and snap is not None
    assert (snap.id, snap.scope, snap.status, snap.assistant_id, snap.source) == (
        "run-0007", "th-1", status, "asst-1", "langgraph")
    assert snap.created_at == T0 + 7 and snap.started_at is None
    assert snap.ended_at() == (T0 + 12 if ended else None)
    if ended:
        assert getattr(snap, ended) == T0 + 12


def test_a_run_without_a_thread_id_belongs_to_the_thread_listed() -> None:
    snap = parse_langgraph_run(run(1, thread=None), "th-listed").snapshot  # type: ignore[arg-type]
    assert snap is not None and snap.scope == "th-listed"


@pytest.mark.parametrize(("fields", "reason", "kept"), [
    ({"status": None}, REASON_MISSING_STATUS, True),
    ({"status": "rollback"}, REASON_UNKNOWN_STATUS, True),
    ({"status": 3}, REASON_UNKNOWN_STATUS, True),
    ({"run_id": None}, REASON_MISSING_ID, False),
    ({"run_id": 12}, REASON_WRONG_TYPE, False),
    ({"run_id": ""}, REASON_WRONG_TYPE, False),
    ({"run_id": "r\ud800"}, REASON_BAD_STRING, False),
    ({"run_id": "r" * 300}, REASON_TOO_LONG, False),
    ({"assistant_id": "a\udfff"}, REASON_BAD_STRING, False),
    ({"assistant_id": 5}, REASON_WRONG_TYPE, False),
    ({"created_at": None}, REASON_WRONG_TYPE, False),
    ({"created_at": 1796339048}, REASON_WRONG_TYPE, False),
    ({"created_at": float("inf")}, REASON_WRONG_TYPE, False),
    ({"created_at": "9" * 5000}, REASON_WRONG_TYPE, False),
    ({"updated_at": "2026-13-01T00:00:00Z"}, REASON_WRONG_TYPE, False),
])
def test_bad_runs_are_counted_by_reason(fields: dict[str, Any], reason: str, kept: bool) -> None:
    result = parse_langgraph_run(run(1, **fields), "th-1")
    assert result.invalid_reason == reason
    assert (result.snapshot is not None) == kept
    if kept:
        assert result.snapshot is not None and result.snapshot.status == "unknown"


@pytest.mark.parametrize("item", [None, 3, "run", [run(1)]])
def test_a_run_that_is_not_an_object_is_counted(item: object) -> None:
    assert parse_langgraph_run(item, "th-1").invalid_reason == REASON_NOT_OBJECT


def test_a_run_without_updated_at_is_kept_without_an_end() -> None:
    item = run(1)
    del item["updated_at"]
    snap = parse_langgraph_run(item, "th-1").snapshot
    assert snap is not None and snap.status == "completed" and snap.ended_at() is None


def test_threads_of_the_search() -> None:
    good = {"thread_id": "th-1", "created_at": iso(T0), "updated_at": iso(T0 + 9)}
    thread, reason = read_thread(good)
    assert reason is None and thread is not None
    assert (thread.id, thread.created_at, thread.updated_at) == ("th-1", T0, T0 + 9)
    for bad, why in [({**good, "thread_id": "a/b"}, REASON_WRONG_TYPE), ({**good, "thread_id": None},
                     REASON_MISSING_ID), ({**good, "updated_at": None}, REASON_WRONG_TYPE), (7, REASON_NOT_OBJECT),
                     ({**good, "thread_id": "\ud800"}, REASON_BAD_STRING)]:
        assert read_thread(bad) == (None, why)
    assert item_key({"run_id": "r"}, "run_id") == "r" and item_key({"run_id": 1}, "run_id") is None


# --- fuzzed ---------------------------------------------------------------------------------------------

times = st.one_of(st.integers(0, 2**34).map(lambda s: iso(s + 0.5)), st.text(max_size=40), hostile_strings,
                  json_values, st.sampled_from(["2026-12-03T23:04:08", "9999-12-31T23:59:59Z",
                                                "0001-01-01T00:00:00+23:59", "2026-12-03T23:04:08.5-00:00"]))
plausible = {
    "run_id": st.one_of(st.text(min_size=1, max_size=30), json_values, hostile_strings),
    "thread_id": st.one_of(st.text(min_size=1, max_size=30), json_values, hostile_strings),
    "assistant_id": st.one_of(st.text(max_size=30), json_values, hostile_strings),
    "status": st.one_of(st.sampled_from([*LANGGRAPH_STATUSES, "rollback"]), json_values),
    "created_at": times,
    "updated_at": times,
}
run_items = st.one_of(st.fixed_dictionaries({}, optional=plausible), json_values)


def check_run(obj: Any) -> None:
    result = parse_langgraph_run(obj, "th-fuzz")
    if result.snapshot is None:
        assert result.invalid_reason in DROPPED
        return
    snap = result.snapshot
    assert snap.id and snap.scope and snap.source == "langgraph" and snapshot_problem(snap) is None
    assert snap.status in statuses.ALL_STATUSES and type(snap.created_at) is int
    known = isinstance(obj.get("status"), str) and obj["status"] in LANGGRAPH_STATUSES
    assert (result.invalid_reason is None) == known
    assert snap.ended_at() == (parse_time(obj.get("updated_at")) if snap.terminal else None)


@FUZZ
@given(run_items)
def test_runs_survive_the_wire(obj: Any) -> None:
    check_run(json.loads(encode(obj)))


@FUZZ
@given(st.one_of(json_values, st.text(max_size=50), hostile_strings))
def test_times_and_threads_never_raise(value: Any) -> None:
    seconds = parse_time(value)
    assert seconds is None or (type(seconds) is int and isinstance(value, str))
    thread, reason = read_thread({"thread_id": value, "created_at": value, "updated_at": value})
    assert (thread is None) != (reason is None)


@FUZZ
@given(st.one_of(st.lists(run_items, max_size=8).map(encode).flatmap(lambda b: st.one_of(st.just(b),
                                                                                         mutations(b))),
                 st.binary(max_size=200)))
def test_offset_pages_never_raise_and_count_every_item(body: bytes) -> None:
    got: list[Any] = []

    async def fetch(offset: int, limit: int) -> bytes:
        return body

    listed = asyncio.run(page_by_offset(fetch, read_runs(_parse_run, "th-fuzz"), lambda i: item_key(i, "run_id"),
                                        lambda items: bool(got.extend(items)), limit=100, overlap=10, max_pages=2))
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list):
        assert listed.stopped == "malformed" and listed.invalid == {REASON_MALFORMED_PAGE: 1}
        return
    assert listed.stopped == "end"
    dropped = sum(n for reason, n in listed.invalid.items() if reason in DROPPED)
    assert len(got) + dropped <= len(items)  # an item read twice (the same id) is dropped, not counted
    assert len({s.id for s in got}) == len(got)
