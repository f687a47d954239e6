"""Sources talk to the world and turn what they get into run snapshots. There are four kinds:

- a *listing* source lists the runs of one scope (a thread) at a time: `ListingSource.poll`;
- a *by-id* source fetches one run by its id: `ByIdSource.fetch`;
- a *receiver* is told about runs (push, webhooks): it serves HTTP routes and hands what it parsed to the
  daemon through the `Inbox` (exporter/inbox.py), answering only after the daemon committed it;
- a *discovery* adds scopes to the watch list (flags, the threads file, registration, list endpoints).

Listings go to `Tracker.observe_listing`; everything else about one run goes to `Tracker.observe_run`.
A new source is a new module here plus a line in `exporter/cli.py` that builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from starlette.routing import BaseRoute

from exporter.model import RunSnapshot

# Given every run seen so far in this poll of one scope, True when paging may stop.
StopRule = Callable[[Sequence[RunSnapshot]], bool]
# Called once per HTTP request made: (endpoint, code), e.g. ("list_runs", "200") or ("list_runs", "timeout").
RequestHook = Callable[[str, str], None]

Outcome = Literal["ok", "gone", "error"]


@dataclass(slots=True)
class PollResult:
    """The outcome of polling one scope once (all the pages it took)."""

    scope: str
    outcome: Outcome
    runs: list[RunSnapshot] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)  # invalid_objects_total reason -> count
    complete: bool = False  # the listing was followed to its end (has_more was false)
    api_reached: bool = False  # some HTTP response came back that shows the API is up (2xx, 404, 429)
    error: str | None = None  # short, secret-free description for logs
    started: float = 0.0  # monotonic seconds
    duration: float = 0.0


@dataclass(slots=True)
class FetchResult:
    """The outcome of fetching one run by id."""

    run_id: str
    outcome: Outcome
    run: RunSnapshot | None = None
    invalid_reason: str | None = None
    api_reached: bool = False
    error: str | None = None


class ListingSource(Protocol):
    name: str  # the `source` label of the runs it reports

    async def poll(self, scope: str, stop: StopRule) -> PollResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StallAware(Protocol):
    """A source that can tell, before any poll ends, that its API has stopped answering (optional)."""

    def stalled(self) -> bool: ...


class ByIdSource(Protocol):
    name: str

    async def fetch(self, run_id: str) -> FetchResult: ...

    async def aclose(self) -> None: ...


class Receiver(Protocol):
    name: str

    def routes(self) -> Sequence[BaseRoute]: ...


@dataclass(slots=True)
class DiscoveryResult:
    """New scopes a discovery found in one pass, with their creation times (epoch seconds)."""

    scopes: list[tuple[str, int]] = field(default_factory=list)
    api_reached: bool = False
    error: str | None = None
    invalid: dict[str, int] = field(default_factory=dict)  # invalid_objects_total reason -> count
    # Scope -> when it last changed (epoch seconds), for an API that says (LangGraph's updated_at), new and
    # known scopes alike: a discovered scope that changed within the lookback stays watched however old it is.
    active: dict[str, int] = field(default_factory=dict)


class Discovery(Protocol):
    name: str  # the listing source whose scopes it finds
    lookback: float  # seconds: scopes created longer ago than this, and idle, leave the watch list

    async def discover(self, is_known: Callable[[str], bool]) -> DiscoveryResult: ...
