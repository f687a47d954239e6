"""What receivers hand to the daemon, and how they learn the outcome once it is committed.

A receiver parses a request, `submit`s the result and awaits it; the daemon `drain`s everything submitted
since its last tick, applies it, commits once (a group commit: every request that arrived meanwhile shares
one transaction), and only then resolves the futures. So an answer of 200 means "in the state file".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from exporter.model import RunSnapshot


@dataclass(slots=True)
class PushOutcome:
    accepted: int = 0
    duplicates: int = 0
    stale: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (item index, reason)

    def as_json(self) -> dict[str, object]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "stale": self.stale,
                "invalid": [{"index": i, "reason": r} for i, r in self.invalid]}


@dataclass(slots=True)
class RunItems:
    """Single-run updates from one request, in the order given; `invalid` were rejected by the parser."""

    runs: list[RunSnapshot]
    invalid: list[tuple[int, str]]
    source: str  # the receiver, for its self-metrics
    outcome: PushOutcome = field(default_factory=PushOutcome)
    follow: list[str] = field(default_factory=list)  # run ids to poll by id until they end (Responses)
    follow_source: str = "responses"  # the by-id source that polls them


RegistrationResult = Literal["added", "exists", "removed", "missing", "full"]


@dataclass(slots=True)
class Registration:
    """Register (add=True) or drop a scope to poll."""

    scope: str
    source: str
    add: bool
    result: RegistrationResult = "missing"


@dataclass(slots=True)
class Delivery:
    """One verified webhook event, for the daemon to dedupe (by webhook-id), apply and count."""

    delivery_id: str
    event_type: str  # the webhooks_total{type} label
    run: RunSnapshot | None  # the terminal snapshot the event alone says; None for other event types
    outcome: str = "accepted"  # set by the daemon: accepted, duplicate or stale
    session: str | None = None  # an `agent.session.*` event: the session it is about
    at: int = 0  # the event's created_at (epoch seconds), for a session event


Item = RunItems | Registration | Delivery


class StoreUnavailable(Exception):
    """The daemon could not commit in time; the request may be retried."""


@dataclass(slots=True)
class Pending:
    item: Item
    future: asyncio.Future[Item]


class Inbox:
    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self.wake: Callable[[], None] = wake or (lambda: None)  # the daemon sets it to wake its loop
        self._pending: list[Pending] = []

    async def submit(self, item: Item, timeout: float) -> Item:
        """Queue `item`; return it with its outcome filled in once committed. Raises StoreUnavailable."""
        future: asyncio.Future[Item] = asyncio.get_running_loop().create_future()
        self._pending.append(Pending(item, future))
        self.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise StoreUnavailable("not committed in time") from None

    def drain(self) -> list[Pending]:
        pending, self._pending = self._pending, []
        return pending

    def __len__(self) -> int:
        return len(self._pending)


def resolve(pending: list[Pending]) -> None:
    """Answer: the items' effects are in the state file."""
    for p in pending:
        if not p.future.done():
            p.future.set_result(p.item)


def fail(pending: list[Pending], why: str) -> None:
    """Answer 503 now: the items' effects are not (or not known to be) in the state file; the client retries."""
    for p in pending:
        if not p.future.done():
            p.future.set_exception(StoreUnavailable(why))
            p.future.exception()  # retrieved: a submitter that already timed out must not log it at GC
