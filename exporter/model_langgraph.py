"""LangGraph Agent Server objects from the network: runs and threads, validated into what the exporter keeps.

A run (`GET /threads/{thread_id}/runs`) is `{run_id, thread_id, assistant_id, status, created_at, updated_at,
metadata, kwargs, ...}` with ISO 8601 times (`2026-12-03T23:04:08.947015+00:00`); a thread (`POST
/threads/search`) is `{thread_id, created_at, updated_at, status, metadata, ...}`. Times are read strictly
(a date, a time, an optional fraction and a mandatory zone) and kept as whole epoch seconds, floored, as
every other source's. Nothing here raises on what a server sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from exporter import statuses
from exporter.model import (
    REASON_NOT_OBJECT,
    REASON_WRONG_TYPE,
    ParseResult,
    RunSnapshot,
    mapped_status_reason,
    object_id,
    object_id_problem,
    snapshot_problem,
    thread_id_problem,
)

SOURCE_LANGGRAPH = "langgraph"

# LangGraph run statuses (langgraph_api.schema.RunStatus) onto the RunStatus labels; README "LangGraph".
# `interrupted` is a run stopped on request (runs.cancel with action=interrupt, or a newer run on the same
# thread with multitask_strategy=interrupt): terminal, hence `cancelled`. A graph that pauses for a human
# (interrupt(), interrupt_before/after) ends its run `success`; the resume is a new run.
LANGGRAPH_STATUSES: dict[str, str] = {
    "pending": statuses.QUEUED,
    "running": statuses.IN_PROGRESS,
    "success": "completed",
    "error": "failed",
    "timeout": "expired",
    "interrupted": "cancelled",
}

MAX_TIME_LEN = 40  # "2026-12-03T23:04:08.947015123+00:00" is 35 characters
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:?\d{2})",
    re.ASCII,
)


def parse_time(value: object) -> int | None:
    """Whole epoch seconds (floored) of a strict ISO 8601 date-time with a zone, or None.

    Not a string, longer than MAX_TIME_LEN, no zone, a 25th hour or a 31st of February: None."""
    if not isinstance(value, str) or len(value) > MAX_TIME_LEN:
        return None
    match = _ISO.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone = match.group(8)
    try:
        offset = timedelta(0) if zone in ("Z", "z") else _offset(zone)
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
        return int(moment.timestamp())  # whole seconds: the fraction only ever floors
    except (ValueError, OverflowError):  # 2026-02-31, hour 24, an offset of a day or more
        return None


def _offset(zone: str) -> timedelta:
    digits = zone[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return -delta if zone[0] == "-" else delta


def parse_langgraph_run(obj: object, thread_id: str, source: str = SOURCE_LANGGRAPH) -> ParseResult:
    """One run of a thread's listing as a snapshot whose scope is its thread. Never raises.

    `created_at` is required; `updated_at`, when the run is terminal, is when it ended (the server sets it
    with the final status); no start time is given, so the start of `running` is when a poll first sees it.
    `assistant_id` is the run's own assistant (metadata.graph_id is the thread's first graph, not the run's)."""
    if not isinstance(obj, dict):
        return ParseResult(None, REASON_NOT_OBJECT)
    run_id = object_id(obj, "run_id")
    if run_id is None:
        return ParseResult(None, object_id_problem(obj, "run_id"))
    scope = obj.get("thread_id")
    if not isinstance(scope, str) or not scope:
        scope = thread_id
    raw_status = obj.get("status")
    status = LANGGRAPH_STATUSES.get(raw_status, statuses.UNKNOWN) if isinstance(raw_status, str) else (
        statuses.UNKNOWN)
    created_at = parse_time(obj.get("created_at"))
    raw_updated = obj.get("updated_at")
    updated_at = parse_time(raw_updated)
    assistant = obj.get("assistant_id")
    if created_at is None or (raw_updated is not None and updated_at is None) or not (
            assistant is None or isinstance(assistant, str)):
        return ParseResult(None, REASON_WRONG_TYPE)
    ended = updated_at if status in statuses.TERMINAL else None
    snap = RunSnapshot(
        id=run_id, scope=scope, status=status, created_at=created_at, assistant_id=assistant or "",
        completed_at=ended if status == "completed" else None,
        failed_at=ended if status == "failed" else None,
        cancelled_at=ended if status == "cancelled" else None,
        expires_at=ended if status == "expired" else None,
        source=source,
    )
    bad = snapshot_problem(snap)
    if bad is not None:
        return ParseResult(None, bad)
    return ParseResult(snap, mapped_status_reason(raw_status, status))


@dataclass(frozen=True, slots=True)
class LangGraphThread:
    """One thread of `POST /threads/search`."""

    id: str
    created_at: int  # epoch seconds
    updated_at: int  # epoch seconds: its last change (a run created or finished, its state, its metadata)


def read_thread(obj: object) -> tuple[LangGraphThread | None, str | None]:
    """One thread of the search, or the invalid-object reason it is skipped for. Its id goes into a URL path."""
    if not isinstance(obj, dict):
        return None, REASON_NOT_OBJECT
    thread_id = object_id(obj, "thread_id")
    if thread_id is None:
        return None, object_id_problem(obj, "thread_id")
    if thread_id_problem(thread_id) is not None:
        return None, REASON_WRONG_TYPE
    created_at, updated_at = parse_time(obj.get("created_at")), parse_time(obj.get("updated_at"))
    if created_at is None or updated_at is None:
        return None, REASON_WRONG_TYPE
    return LangGraphThread(thread_id, created_at, updated_at), None


def item_key(obj: object, key: str) -> str | None:
    """The id of a raw list item, to line pages up by; None when it has no usable one."""
    return object_id(obj, key) if isinstance(obj, dict) else None
