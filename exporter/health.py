"""What /healthz and /readyz say: the loop records its progress here, the committer why the store refuses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Health:
    last_tick: float = field(default_factory=time.monotonic)
    polls_applied: int = 0
    reached_api: bool = False  # since this process started
    started: bool = False
    store_error: str | None = None  # why the last commit failed, until one succeeds

    def healthy(self, now: float, poll_interval: float) -> tuple[bool, str]:
        age = now - self.last_tick
        limit = max(30.0, 3 * poll_interval)
        return (age < limit, "ok" if age < limit else f"poll loop stalled for {age:.0f}s")

    def ready(self, watching: bool) -> tuple[bool, str]:
        """`watching`: some scope is to be polled (else no poll has to reach the API first)."""
        if not self.started:
            return False, "starting"
        if self.store_error is not None:
            return False, self.store_error
        if not watching:
            return True, "ok (no threads to watch)"
        if self.reached_api:
            return True, "ok"
        return False, "waiting for the first poll that reaches the API"
