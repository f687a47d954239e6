"""Commit with retry: once per tick, the owners of persisted state hand over their change sets, merged into
one and written in one transaction. A commit that fails keeps its change set (set aside before the store
sees it, so nothing taken from an owner is dropped unwritten), merges later ones into it and is retried with
doubling delays; /readyz says why meanwhile.

The transaction runs on a writer thread, one at a time: SQLite releases the GIL at every statement, and on
the loop each release waited for the GIL behind the render thread, so a 1 ms commit held /healthz for 5-14 ms.
The loop copies the change set into statements (`Store.prepare`), hands them over and goes on; the
requests that commit answers are answered when it has ended (`collect`), as before.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from exporter.changeset import ChangeSet
from exporter.health import Health
from exporter.logs import RateLimiter
from exporter.runstate import Remembered
from exporter.selfmetrics import SelfMetrics
from exporter.store import Store
from exporter.storewrites import Statements

log = logging.getLogger("exporter.daemon")  # the loop's logger, as before this module split off

STORE_RETRY_MIN = 0.5  # seconds; a failed commit is retried with doubling delays up to the max
STORE_RETRY_MAX = 30.0
STORE_LOG_INTERVAL = 60.0


def describe(exc: Exception) -> str:
    """One printable line: an error about a value the store could not encode may carry a lone surrogate,
    which would break the log line and the /readyz body that show it."""
    text = str(exc) if isinstance(exc, (sqlite3.Error, OSError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.encode("utf-8", "backslashreplace").decode("utf-8").split())


class Writer(Protocol):
    def submit(self, work: Callable[[], None], /) -> Future[None]: ...

    def close(self) -> None: ...


class InlineWriter:
    """Runs the work at once, on the caller's thread (tests that step the loop by hand, and the last commit)."""

    def submit(self, work: Callable[[], None], /) -> Future[None]:
        done: Future[None] = Future()
        try:
            work()
        except BaseException as exc:  # handed over like the thread's: the committer decides
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def close(self) -> None:
        return None


class ThreadWriter:
    """One thread that runs the store's transactions in order."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")

    def submit(self, work: Callable[[], None], /) -> Future[None]:
        return self._pool.submit(work)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Committer:
    def __init__(self, store: Store, owners: Sequence[Callable[[], ChangeSet]], metrics: SelfMetrics,
                 health: Health, wall: Callable[[], float], mono: Callable[[], float],
                 writer: Writer | None = None) -> None:
        self.store = store
        self.owners = tuple(owners)  # each hands over its changes since it was last asked
        self.metrics = metrics
        self.health = health
        self.wall = wall
        self.mono = mono
        self.writer: Writer = writer if writer is not None else InlineWriter()
        self.on_done: Callable[[], None] = lambda: None  # called from the writer thread: wake the loop
        self.uncommitted: ChangeSet | None = None  # being written, or refused and waiting for its retry
        self.in_flight: Future[None] | None = None
        self._retrying = False
        self.retry_at = 0.0
        self.delay = STORE_RETRY_MIN
        self._log = RateLimiter(STORE_LOG_INTERVAL)

    def retry_in(self) -> float | None:
        """Seconds until a waiting change set may be retried; None when nothing waits (or it is being written)."""
        if self.uncommitted is None or self.in_flight is not None:
            return None
        return max(0.0, self.retry_at - self.mono())

    def start(self, now_or_never: bool = False) -> bool:
        """Hand everything not yet written to the writer; within the backoff of a failed commit only take it in
        (unless `now_or_never`: the last commit before the stop). False: nothing handed over (a write is in
        flight, the backoff runs, or the change set could not be prepared)."""
        if self.in_flight is not None:
            return False
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
            statements = self.store.prepare(batch)
        except Exception as exc:  # never a crash: kept for the retry, as a refused commit
            self._failed(exc)
            return False
        self._retrying = retrying
        self.in_flight = self.writer.submit(functools.partial(self._write, statements, retrying))
        self.in_flight.add_done_callback(lambda _: self.on_done())
        return True

    def _write(self, statements: Statements, retrying: bool) -> None:
        """On the writer thread: the store's connection is used there only, once the store is loaded."""
        if retrying:
            self.store.checkpoint()  # a WAL that filled the volume: empty it first, now that it may fit
        try:
            self.store.write(statements)
        except BaseException:
            self.store.checkpoint()  # a full small volume: a truncated WAL gives room for the retry
            raise

    def collect(self) -> bool | None:
        """The write in flight, once it has ended: True written, False refused (kept for a retry); None: no
        write has ended since the last call."""
        done = self.in_flight
        if done is None or not done.done():
            return None
        self.in_flight = None
        exc = done.exception()
        if exc is not None:
            self._failed(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            return False
        if self._retrying:
            log.info("state file %s writable again", self.store.path)
        self.uncommitted = None
        self.delay = STORE_RETRY_MIN
        self.health.store_error = None
        return True

    def wait(self) -> None:
        """Wait for the write in flight to end (the stop)."""
        if self.in_flight is not None:
            self.in_flight.exception()  # waits; what it raised is handled by collect

    def finish(self) -> bool | None:
        """Wait for the write in flight, then collect it."""
        self.wait()
        return self.collect()

    def commit(self, now_or_never: bool = False) -> bool:
        """Write everything not yet written and wait for it: True once it is in the state file."""
        self.finish()
        return self.start(now_or_never) and bool(self.finish())

    def close(self) -> None:
        self.finish()
        self.writer.close()

    def _failed(self, exc: Exception) -> None:
        self.metrics.store_error()
        self.retry_at = self.mono() + self.delay
        self.delay = min(STORE_RETRY_MAX, self.delay * 2)
        self.health.store_error = f"cannot write state file {self.store.path}: {describe(exc)}"
        if self._log.allow("commit", self.wall()):
            log.error("%s; keeping the changes and retrying (logged once a minute)", self.health.store_error)

    def recall(self, unknown: Sequence[str]) -> dict[str, Remembered]:
        """What the state file remembers of these ids (one query per 900), plus the remembered runs of a
        commit being written or waiting for its retry (the loop reads the last commit, never a write in
        flight)."""
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
