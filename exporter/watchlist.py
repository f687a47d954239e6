"""The scopes to poll: from flags, the threads file, registrations over the write API and discoveries.

Registrations are persisted (the daemon commits `take_changes()` with the tick's other effects); flags and
the threads file are re-read from their sources at every start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

from exporter.model import SOURCE_THREADS

log = logging.getLogger(__name__)


class ThreadsFileWatcher:
    """Re-reads a threads file when it changes; keeps the last good list when it cannot be read."""

    def __init__(self, path: Path, reader: Callable[[Path], Collection[str]]) -> None:
        self.path = path
        self._reader = reader
        self._stamp: tuple[int, int, int] | None = None
        self.threads: tuple[str, ...] = ()

    def changed(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return False
            threads = tuple(self._reader(self.path))
        except OSError as exc:
            log.warning("cannot read threads file %s: %s; keeping %d threads", self.path,
                        exc.strerror or exc, len(self.threads))
            return False
        self._stamp = stamp
        if threads == self.threads:
            return False
        self.threads = threads
        return True

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
    ) -> None:
        self.static = tuple(static)
        self.threads_file = threads_file
        self.registered: dict[str, str] = dict(registrations or {})
        self.discovered: dict[str, str] = {}
        self.max_watched = max_watched
        self._changes: dict[str, str | None] = {}

    def wanted(self) -> dict[str, str]:
        """scope -> source, in the order flags, file, registrations, discoveries."""
        out: dict[str, str] = {}
        file_threads = self.threads_file.threads if self.threads_file else ()
        for scope in (*self.static, *file_threads):
            out.setdefault(scope, SOURCE_THREADS)
        for scope, source in (*self.registered.items(), *self.discovered.items()):
            out.setdefault(scope, source)
        return out

    def __len__(self) -> int:
        return len(self.wanted())

    def register(self, scope: str, source: str) -> str:
        """'added', 'exists' or 'full' (past --max-watched)."""
        if scope in self.registered or scope in self.wanted():
            if scope not in self.registered:
                self.registered[scope] = source  # now also kept when the flag or file drops it
                self._changes[scope] = source
            return "exists"
        if len(self.wanted()) >= self.max_watched:
            return "full"
        self.registered[scope] = source
        self._changes[scope] = source
        return "added"

    def unregister(self, scope: str) -> str:
        """'removed' or 'missing'. A scope from the flags or the file stays watched."""
        if self.registered.pop(scope, None) is None:
            return "missing"
        self._changes[scope] = None
        return "removed"

    def take_changes(self) -> dict[str, str | None]:
        changes, self._changes = self._changes, {}
        return changes

    def restore_changes(self, changes: dict[str, str | None]) -> None:
        """A commit failed: keep its registration changes for the retry (newer ones win)."""
        self._changes = {**changes, **self._changes}
