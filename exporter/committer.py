"""Commit with retry: once per tick, the owners of persisted state hand over their change sets, merged into
one and written in one transaction. A commit that fails keeps its change set (set aside before the store
sees it, so nothing taken from an owner is dropped unwritten), merges later ones into it and is retried with
doubling delays; /readyz says why meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence

from exporter.changeset import ChangeSet
from exporter.health import Health
from exporter.logs import RateLimiter
from exporter.runstate import Remembered
from exporter.selfmetrics import SelfMetrics
from exporter.store import Store

log = logging.getLogger("exporter.daemon")  # the loop's logger, as before this module split off

STORE_RETRY_MIN = 0.5  # seconds; a failed commit is retried with doubling delays up to the max
STORE_RETRY_MAX = 30.0
STORE_LOG_INTERVAL = 60.0


def describe(exc: Exception) -> str:
    """One printable line: an error about a value the store could not encode may carry a lone surrogate,
    which would break the log line and the /readyz body that show it."""
    text = str(exc) if isinstance(exc, (sqlite3.Error, OSError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.encode("utf-8", "backslashreplace").decode("utf-8").split())


class Committer:
    def __init__(self, store: Store, owners: Sequence[Callable[[], ChangeSet]], metrics: SelfMetrics,
                 health: Health, wall: Callable[[], float], mono: Callable[[], float]) -> None:
        self.store = store
        self.owners = tuple(owners)  # each hands over its changes since it was last asked
        self.metrics = metrics
        self.health = health
        self.wall = wall
        self.mono = mono
        self.uncommitted: ChangeSet | None = None  # refused by the store, waiting for its retry
        self.retry_at = 0.0
        self.delay = STORE_RETRY_MIN
        self._log = RateLimiter(STORE_LOG_INTERVAL)

    def retry_in(self) -> float | None:
        """Seconds until a waiting change set may be retried; None when nothing waits."""
        return None if self.uncommitted is None else max(0.0, self.retry_at - self.mono())

    def commit(self, now_or_never: bool = False) -> bool:
        """Write everything not yet written; within the backoff of a failed commit only take it in (unless
        `now_or_never`: the last commit before the stop). On any error keep it all for a retry."""
        if now_or_never:
            self.retry_at = 0.0
        try:
            batch = ChangeSet()
            for take in self.owners:
                batch.merge(take())
            retrying = self.uncommitted is not None
            if self.uncommitted is not None:
                batch = self.uncommitted.merge(batch)
                if self.mono() < self.retry_at:
                    return False
            self.uncommitted = batch
            if retrying:
                self.store.checkpoint()  # a WAL that filled the volume: empty it first, now that it may fit
            self.store.commit(batch)
        except Exception as exc:  # a full disk, a locked file, or a value the store cannot write: never a crash
            self._failed(exc)
            return False
        if retrying:
            log.info("state file %s writable again", self.store.path)
        self.uncommitted = None
        self.delay = STORE_RETRY_MIN
        self.health.store_error = None
        return True

    def _failed(self, exc: Exception) -> None:
        self.store.checkpoint()  # a full small volume: a truncated WAL gives room for the retry
        self.metrics.store_error()
        self.retry_at = self.mono() + self.delay
        self.delay = min(STORE_RETRY_MAX, self.delay * 2)
        self.health.store_error = f"cannot write state file {self.store.path}: {describe(exc)}"
        if self._log.allow("commit", self.wall()):
            log.error("%s; keeping the changes and retrying (logged once a minute)", self.health.store_error)

    def recall(self, unknown: Sequence[str]) -> dict[str, Remembered]:
        """What the state file remembers of these ids (one query per 900), plus the remembered runs of a
        commit that failed and waits for its retry."""
        if not unknown:
            return {}
        try:
            found = self.store.recall(unknown)
        except sqlite3.Error as exc:  # unreadable now: answer from memory; the commit will say what is wrong
            self.metrics.store_error()
            if self._log.allow("recall", self.wall()):
                log.error("cannot read state file %s: %s (logged once a minute)", self.store.path, exc)
            found = {}
        if self.uncommitted is not None and self.uncommitted.runs.remembered:
            waiting = self.uncommitted.runs.remembered
            found.update((i, waiting[i]) for i in unknown if i in waiting)
        return found
