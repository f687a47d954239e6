"""Sources talk to an API (or receive pushes) and turn what they get into run snapshots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from exporter.model import RunSnapshot

# Given every run seen so far in this poll of one thread, True when paging may stop.
StopRule = Callable[[Sequence[RunSnapshot]], bool]
# Called once per HTTP request made: (endpoint, code), e.g. ("list_runs", "200") or ("list_runs", "timeout").
RequestHook = Callable[[str, str], None]

Outcome = Literal["ok", "gone", "error"]


@dataclass(slots=True)
class PollResult:
    """The outcome of polling one thread once (all the pages it took)."""

    thread_id: str
    outcome: Outcome
    runs: list[RunSnapshot] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)  # invalid_objects_total reason -> count
    complete: bool = False  # the listing was followed to its end (has_more was false)
    api_reached: bool = False  # some HTTP response came back that shows the API is up (2xx, 404, 429)
    error: str | None = None  # short, secret-free description for logs
    started: float = 0.0  # monotonic seconds
    duration: float = 0.0
