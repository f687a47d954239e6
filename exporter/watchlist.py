"""The scopes to poll: from flags, the threads file, registrations over the write API and discoveries.

Registrations are persisted (the daemon commits `take_changes()` with the tick's other effects); flags and
the threads file are re-read from their sources at every start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from exporter.changeset import ChangeSet
from exporter.model import SOURCE_THREADS
from exporter.threadsfile import ThreadsFile

log = logging.getLogger(__name__)


class ThreadsFileWatcher:
    """Re-reads a threads file when it changes; keeps the last good list when it cannot be read. Invalid lines
    and read errors are logged once per change (of the file, or of the error), not at every check."""

    def __init__(self, path: Path, reader: Callable[[Path], ThreadsFile]) -> None:
        self.path = path
        self._reader = reader
        self._stamp: tuple[int, int, int] | None = None
        self._error: str | None = None
        self.threads: tuple[str, ...] = ()
        self.rejected = 0  # invalid lines read since the daemon last took the count

    def changed(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return False
            parsed = self._reader(self.path)
        except OSError as exc:
            error = str(exc.strerror or exc)
            if error != self._error:
                log.warning("cannot read threads file %s: %s; keeping %d threads", self.path, error,
                            len(self.threads))
            self._error, self._stamp = error, None
            return False
        self._stamp, self._error = stamp, None
        for number, reason in parsed.invalid:
            log.warning("threads file %s line %d skipped: %s", self.path, number, reason)
        self.rejected += len(parsed.invalid)
        if parsed.ids == self.threads:
            return False
        self.threads = parsed.ids
        return True

    def take_rejected(self) -> int:
        rejected, self.rejected = self.rejected, 0
        return rejected

    def reload(self) -> bool:
        """Re-read now even if the file looks unchanged (SIGHUP); True when the list changed."""
        self._stamp = None
        return self.changed()


class WatchList:
    """Ordered, de-duplicated scopes of the listing sources, each with the source that lists it."""

    def __init__(
        self,
        static: Iterable[str] = (),
        threads_file: ThreadsFileWatcher | None = None,
        registrations: Mapping[str, str] | None = None,
        max_watched: int = 100_000,
        discovered: Mapping[str, tuple[str, int]] | None = None,
        owns: Callable[[str], bool] | None = None,
        static_source: str = SOURCE_THREADS,
    ) -> None:
        self.static = tuple(static)
        self.static_source = static_source  # the listing source of the flags' and the file's scopes
        self.threads_file = threads_file
        self.registered: dict[str, str] = dict(registrations or {})
        # scope -> (source, created_at, or when it was last seen to change if later): it leaves after the lookback
        self.discovered: dict[str, tuple[str, int]] = dict(discovered or {})
        self.max_watched = max_watched
        self.owns = owns or (lambda _: True)  # sharding: only this replica's scopes are watched
        self._changes: dict[str, str | None] = {}
        self._discovered_changes: dict[str, tuple[str, int] | None] = {}
        # wanted() is asked often: cached until a list changes (a new threads file list is a new tuple)
        self._cache: tuple[tuple[str, ...], dict[str, str]] | None = None

    def wanted(self) -> dict[str, str]:
        """scope -> source, in the order flags, file, registrations, discoveries. Do not modify."""
        file_threads = self.threads_file.threads if self.threads_file else ()
        if self._cache is None or self._cache[0] is not file_threads:
            self._cache = (file_threads, self._build(file_threads))
        return self._cache[1]

    def _build(self, file_threads: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for scope in (*self.static, *file_threads):
            out.setdefault(scope, self.static_source)
        for scope, source in self.registered.items():
            out.setdefault(scope, source)
        for scope, (source, _) in self.discovered.items():
            out.setdefault(scope, source)
        return {scope: source for scope, source in out.items() if self.owns(scope)}

    def discover(self, scope: str, source: str, created_at: int) -> bool:
        """Add a scope a discovery found; False when it is known already or the list is full."""
        wanted = self.wanted()
        if scope in wanted or len(wanted) >= self.max_watched or not self.owns(scope):
            return False
        self.discovered[scope] = (source, created_at)
        self._discovered_changes[scope] = (source, created_at)
        wanted[scope] = source  # the cache stays valid: a new scope only adds an entry
        return True

    def touch(self, scope: str, changed_at: int) -> None:
        """A discovered scope changed at `changed_at`: its lookback runs from then (persisted)."""
        entry = self.discovered.get(scope)
        if entry is not None and changed_at > entry[1]:
            self.discovered[scope] = self._discovered_changes[scope] = (entry[0], changed_at)

    def undiscover(self, scope: str) -> None:
        if self.discovered.pop(scope, None) is not None:
            self._discovered_changes[scope] = None
            self._cache = None

    def __len__(self) -> int:
        return len(self.wanted())

    def register(self, scope: str, source: str) -> str:
        """'added', 'exists' or 'full' (past --max-watched)."""
        if scope in self.registered or scope in self.wanted():
            if scope not in self.registered:
                self.registered[scope] = source  # now also kept when the flag or file drops it
                self._changes[scope] = source
                self._cache = None
            return "exists"
        if len(self.wanted()) >= self.max_watched:
            return "full"
        self.registered[scope] = source
        self._changes[scope] = source
        self.wanted()[scope] = source  # the cache stays valid: a new scope only adds an entry
        return "added"

    def unregister(self, scope: str) -> str:
        """'removed' or 'missing'. A scope from the flags or the file stays watched."""
        if self.registered.pop(scope, None) is None:
            return "missing"
        self._changes[scope] = None
        self._cache = None
        return "removed"

    def release(self, scope: str) -> bool:
        """Drop a registered or discovered scope that needs no more polls (a response that ended)."""
        found = scope in self.registered or scope in self.discovered
        self.unregister(scope)
        self.undiscover(scope)
        return found

    def take_changes(self) -> ChangeSet:
        """Registrations and discoveries to write (None: removed)."""
        changes = ChangeSet(registrations=self._changes, discovered=self._discovered_changes)
        self._changes, self._discovered_changes = {}, {}
        return changes

