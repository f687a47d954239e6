"""The run status vocabulary shared by every layer."""

from __future__ import annotations

# The nine statuses the Assistants v2 API sends, in lifecycle order.
API_STATUSES: tuple[str, ...] = (
    "queued",
    "in_progress",
    "requires_action",
    "cancelling",
    "cancelled",
    "failed",
    "completed",
    "incomplete",
    "expired",
)
QUEUED = "queued"
IN_PROGRESS = "in_progress"
REQUIRES_ACTION = "requires_action"
CREATED = "created"  # client-side only (RunStatus.Created), for pushed runs
UNKNOWN = "unknown"  # RunStatus.Null, a missing status, or a status the API adds later

ALL_STATUSES: tuple[str, ...] = (CREATED, *API_STATUSES, UNKNOWN)
TERMINAL: frozenset[str] = frozenset({"cancelled", "failed", "completed", "incomplete", "expired"})
NON_TERMINAL: tuple[str, ...] = tuple(s for s in ALL_STATUSES if s not in TERMINAL)
TERMINAL_STATUSES: tuple[str, ...] = tuple(s for s in ALL_STATUSES if s in TERMINAL)

# Client-library RunStatus enum member names, as pushed by applications.
ENUM_NAMES: dict[str, str] = {
    "Null": UNKNOWN,
    "Created": CREATED,
    "Queued": "queued",
    "InProgress": "in_progress",
    "Completed": "completed",
    "RequiresAction": "requires_action",
    "Expired": "expired",
    "Cancelling": "cancelling",
    "Cancelled": "cancelled",
    "Failed": "failed",
    "Incomplete": "incomplete",
}

_KNOWN = frozenset(ALL_STATUSES)


def normalize(raw: object) -> str:
    """Map an API string or enum name to one of ALL_STATUSES; anything else is `unknown`."""
    if not isinstance(raw, str):
        return UNKNOWN
    if raw in _KNOWN:
        return raw
    return ENUM_NAMES.get(raw, UNKNOWN)


def is_recognized(raw: object) -> bool:
    return isinstance(raw, str) and (raw in _KNOWN or raw in ENUM_NAMES)


def is_terminal(status: str) -> bool:
    return status in TERMINAL
