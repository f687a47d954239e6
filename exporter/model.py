"""Run snapshots: the validated form of one run object, as every source produces it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter import statuses

# invalid_objects_total{reason} values; documented in the README.
REASON_NOT_OBJECT = "not_object"
REASON_MISSING_ID = "missing_id"
REASON_WRONG_TYPE = "wrong_type"
REASON_MISSING_STATUS = "missing_status"
REASON_UNKNOWN_STATUS = "unknown_status"
REASON_MALFORMED_PAGE = "malformed_page"
REASON_THREADS_FILE_LINE = "threads_file_line"
# The rule for strings from outside (ids, label values, reasons): see string_problem.
REASON_BAD_STRING = "bad_string"
REASON_TOO_LONG = "too_long"
INVALID_REASONS: tuple[str, ...] = (
    REASON_NOT_OBJECT,
    REASON_MISSING_ID,
    REASON_WRONG_TYPE,
    REASON_MISSING_STATUS,
    REASON_UNKNOWN_STATUS,
    REASON_MALFORMED_PAGE,
    REASON_THREADS_FILE_LINE,
    REASON_BAD_STRING,
    REASON_TOO_LONG,
)

MAX_STRING_LEN = 256  # characters in any id, label value or reason from outside
_MAX_JSON_INT = 2**53  # the largest integer every JSON reader (a float64) holds exactly
MAX_THREAD_ID_LEN = MAX_STRING_LEN
_BAD_ID_CHARS = re.compile(r"[\s/\\?#%]")


def string_problem(value: str) -> str | None:
    """REASON_BAD_STRING or REASON_TOO_LONG when a string from outside breaks the rule, else None.

    The rule: Unicode scalar values only (JSON's "\\ud800" decodes to a lone surrogate, which neither the
    state file nor the exposition can write as UTF-8) and at most MAX_STRING_LEN characters (a 200 KB label
    value would be copied into every series of its run)."""
    if len(value) > MAX_STRING_LEN:
        return REASON_TOO_LONG
    return None if is_unicode_text(value) else REASON_BAD_STRING


def is_unicode_text(value: str) -> bool:
    """False when value holds a lone surrogate (U+D800..U+DFFF), the one thing a str holds that UTF-8 cannot."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def thread_id_problem(thread_id: object) -> str | None:
    """Why a thread id cannot be used (it goes into a URL path), or None when it can."""
    if not isinstance(thread_id, str) or not thread_id:
        return "empty"
    if len(thread_id) > MAX_THREAD_ID_LEN:
        return f"longer than {MAX_THREAD_ID_LEN} characters"
    if string_problem(thread_id) is not None:
        return "not valid Unicode text (a lone surrogate)"
    # Control and invisible format characters (a BOM, a zero-width space) are always a copy-paste accident.
    if thread_id in (".", "..") or _BAD_ID_CHARS.search(thread_id) or any(
        unicodedata.category(ch) in ("Cc", "Cf") for ch in thread_id
    ):
        return "contains whitespace, a slash or another character not allowed in an id"
    return None


# The `source` label values of the sources that report runs.
SOURCE_THREADS = "threads"
SOURCE_PUSH = "push"
SOURCE_RESPONSES = "responses"
SOURCE_WEBHOOKS = "webhooks"


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What one observation says about one run. Times are integer epoch seconds from the API."""

    id: str
    scope: str  # what a listing source lists it under (a thread id); "" when it belongs to none
    status: str  # one of statuses.ALL_STATUSES
    created_at: int
    assistant_id: str = ""
    model: str = ""
    started_at: int | None = None
    expires_at: int | None = None
    cancelled_at: int | None = None
    failed_at: int | None = None
    completed_at: int | None = None
    error_code: str | None = None
    incomplete_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    source: str = SOURCE_THREADS  # the source that reported it: the run's `source` label if it is new
    created_known: bool = True  # False: created_at is a stand-in (a webhook event has no creation time)

    @property
    def terminal(self) -> bool:
        return self.status in statuses.TERMINAL

    def ended_at(self) -> int | None:
        """The API's own end timestamp for a terminal run, if it gave one."""
        return {
            "completed": self.completed_at,
            "failed": self.failed_at,
            "cancelled": self.cancelled_at,
            "expired": self.expires_at,
            "incomplete": self.completed_at,
        }.get(self.status)


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A snapshot, an invalid-object reason, or both (a run with an unrecognized status is kept as `unknown`)."""

    snapshot: RunSnapshot | None
    invalid_reason: str | None = None


def json_int(value: object) -> int | None:
    """A JSON number as an int (floats truncated), or None when it is not a number or not a usable one.

    JSON may hold NaN, Infinity or a 400-digit integer: int() of the first two raises, and the third would
    overflow the float arithmetic of durations and counters (and SQLite's integers) later."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not -_MAX_JSON_INT <= value <= _MAX_JSON_INT:  # False for NaN too
        return None
    return int(value)


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    number = json_int(value)
    if number is None:  # the wrong type
        raise TypeError(key)
    return number


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _nested_str(obj: dict[str, Any], outer: str, inner: str) -> str | None:
    sub = obj.get(outer)
    return _opt_str(sub.get(inner)) if isinstance(sub, dict) else None


def _usage(obj: dict[str, Any], prompt: str = "prompt_tokens",
           completion: str = "completion_tokens") -> tuple[int | None, int | None]:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None, None
    return _opt_int(usage, prompt), _opt_int(usage, completion)


def object_id(obj: dict[str, Any], key: str = "id") -> str | None:
    """The object's id under `key`, or None; `object_id_problem` says why not."""
    value = obj.get(key)
    return value if isinstance(value, str) and value and string_problem(value) is None else None


def object_id_problem(obj: dict[str, Any], key: str = "id") -> str:
    value = obj.get(key)
    if value is None:
        return REASON_MISSING_ID
    if isinstance(value, str) and value:
        return string_problem(value) or REASON_WRONG_TYPE
    return REASON_WRONG_TYPE


def snapshot_problem(snap: RunSnapshot) -> str | None:
    """The first string of a snapshot that breaks the rule of string_problem, as its reason, or None."""
    for value in (snap.id, snap.scope, snap.assistant_id, snap.model, snap.error_code, snap.incomplete_reason):
        if value is not None and (problem := string_problem(value)) is not None:
            return problem
    return None


def mapped_status_reason(raw_status: object, status: str) -> str | None:
    """Why an object of an API whose statuses are mapped onto RunStatus is counted invalid though kept: no
    status, or one the mapping does not know."""
    if raw_status is None:
        return REASON_MISSING_STATUS
    return REASON_UNKNOWN_STATUS if status == statuses.UNKNOWN else None


def _status_reason(raw_status: object) -> str | None:
    if raw_status is None:
        return REASON_MISSING_STATUS
    if not statuses.is_recognized(raw_status):
        return REASON_UNKNOWN_STATUS
    return None


def _parse(obj: object, build: Callable[[dict[str, Any], str], RunSnapshot]) -> ParseResult:
    """The checks every run object shares; `build` reads the rest and raises TypeError for a bad field."""
    if not isinstance(obj, dict):
        return ParseResult(None, REASON_NOT_OBJECT)
    run_id = object_id(obj)
    if run_id is None:
        return ParseResult(None, object_id_problem(obj))
    try:
        snap = build(obj, run_id)
    except TypeError:
        return ParseResult(None, REASON_WRONG_TYPE)
    problem = snapshot_problem(snap)
    if problem is not None:
        return ParseResult(None, problem)
    return ParseResult(snap, _status_reason(obj.get("status")))


def _created_at(obj: dict[str, Any]) -> int:
    created_at = _opt_int(obj, "created_at")
    if created_at is None:
        raise TypeError("created_at")
    return created_at


def parse_response(obj: object, source: str) -> ParseResult:
    """Validate one Responses API `Response` object. It has no thread: its scope is "". Never raises.

    `created_at` is a float there; `completed_at` is only set for completed responses, so the other
    terminal statuses end when the exporter learns of them (or at a webhook's created_at)."""
    def build(obj: dict[str, Any], run_id: str) -> RunSnapshot:
        prompt, completion = _usage(obj, "input_tokens", "output_tokens")
        status = statuses.normalize(obj.get("status"))
        completed_at = _opt_int(obj, "completed_at")
        return RunSnapshot(
            id=run_id,
            scope="",
            status=status,
            created_at=_created_at(obj),
            model=_opt_str(obj.get("model")) or "",
            completed_at=completed_at if status == "completed" else None,
            error_code=_nested_str(obj, "error", "code"),
            incomplete_reason=_nested_str(obj, "incomplete_details", "reason"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            source=source,
        )
    return _parse(obj, build)


def parse_run(obj: object, thread_id: str | None = None, source: str = SOURCE_THREADS) -> ParseResult:
    """Validate one run object from the network. Never raises."""
    def build(obj: dict[str, Any], run_id: str) -> RunSnapshot:
        tid = obj.get("thread_id", thread_id)
        if not isinstance(tid, str) or not tid:
            tid = thread_id
        if tid is None:
            raise TypeError("thread_id")
        prompt, completion = _usage(obj)
        return RunSnapshot(
            id=run_id,
            scope=tid,
            status=statuses.normalize(obj.get("status")),
            created_at=_created_at(obj),
            assistant_id=_opt_str(obj.get("assistant_id")) or "",
            model=_opt_str(obj.get("model")) or "",
            started_at=_opt_int(obj, "started_at"),
            expires_at=_opt_int(obj, "expires_at"),
            cancelled_at=_opt_int(obj, "cancelled_at"),
            failed_at=_opt_int(obj, "failed_at"),
            completed_at=_opt_int(obj, "completed_at"),
            error_code=_nested_str(obj, "last_error", "code"),
            incomplete_reason=_nested_str(obj, "incomplete_details", "reason"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            source=source,
        )
    return _parse(obj, build)


SOURCE_SESSIONS = "sessions"
# Agents API turn statuses that differ from run statuses: `waiting` (for external input) is the closest
# meaning of requires_action, where a run waits for its caller. The other five are run statuses already.
TURN_STATUSES: dict[str, str] = {
    "queued": statuses.QUEUED,
    "in_progress": statuses.IN_PROGRESS,
    "waiting": statuses.REQUIRES_ACTION,
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def parse_turn(obj: object, session_id: str, source: str = SOURCE_SESSIONS) -> ParseResult:
    """Validate one Agents API turn (`agent.session.turn`) into a run snapshot whose scope is its session.

    `completed_at` is set for every terminal turn: it is the end of whichever terminal status it reached.
    `agent_id` becomes `assistant_id`; usage input/output tokens become prompt/completion. Never raises."""
    if not isinstance(obj, dict):
        return ParseResult(None, REASON_NOT_OBJECT)
    turn_id = object_id(obj)
    if turn_id is None:
        return ParseResult(None, object_id_problem(obj))
    scope = obj.get("session_id")
    if not isinstance(scope, str) or not scope:
        scope = session_id
    raw_status = obj.get("status")
    status = TURN_STATUSES.get(raw_status, statuses.UNKNOWN) if isinstance(raw_status, str) else statuses.UNKNOWN
    try:
        created_at = _created_at(obj)
        prompt, completion = _usage(obj, "input_tokens", "output_tokens")
        ended = _opt_int(obj, "completed_at")
        snap = RunSnapshot(
            id=turn_id,
            scope=scope,
            status=status,
            created_at=created_at,
            assistant_id=_opt_str(obj.get("agent_id")) or "",
            started_at=_opt_int(obj, "started_at"),
            error_code=_nested_str(obj, "error", "code"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            source=source,
            completed_at=ended if status == "completed" else None,
            failed_at=ended if status == "failed" else None,
            cancelled_at=ended if status == "cancelled" else None,
        )
    except TypeError:
        return ParseResult(None, REASON_WRONG_TYPE)
    problem = snapshot_problem(snap)
    if problem is not None:
        return ParseResult(None, problem)
    return ParseResult(snap, mapped_status_reason(raw_status, status))
