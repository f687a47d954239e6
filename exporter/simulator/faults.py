"""Fault injection: rate limits, server errors, latency, malformed list items and truncated bodies."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any

# Knobs; all off by default. The Simulator reads them on every request, so tests may change them live.


@dataclass
class Faults:
    rate_limit_rps: float | None = None  # org-wide token bucket refill rate; None = no limit
    rate_limit_burst: int = 20  # bucket size (x-ratelimit-limit-requests when limited)
    error_rate: float = 0.0  # probability of a random 500 or 503
    latency: float = 0.0  # seconds added to every response
    malformed_rate: float = 0.0  # probability that one list item is corrupted
    truncate_rate: float = 0.0  # probability that a 200 JSON body is cut in half
    force_status: list[int] = field(default_factory=list)  # the next responses, in order, get these codes
    forced_retry_after_ms: int = 20  # retry-after-ms sent with a forced 429
    seed: int | None = None  # RNG seed for the faults; None = the simulator's seed


# Without a configured limit the headers still describe a generous bucket, as the real API always sends them.
_DISPLAY_RPS = 10_000 / 60.0
_DISPLAY_BURST = 10_000


@dataclass(frozen=True, slots=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: float  # until one token is available (only meaningful when not allowed)


def format_duration(seconds: float) -> str:
    """The API's x-ratelimit-reset-* format: `120ms`, `1s`, `8.64s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


class TokenBucket:
    def __init__(self) -> None:
        self._tokens: float | None = None
        self._last: float | None = None
        self._config: tuple[float, int] | None = None

    def take(self, now: float, rps: float, burst: int) -> RateLimitState:
        burst = max(1, burst)
        if self._config != (rps, burst) or self._tokens is None or self._last is None:
            # A changed configuration starts from a full bucket.
            self._config, self._tokens, self._last = (rps, burst), float(burst), now
        elapsed = max(0.0, now - self._last)
        self._tokens = min(float(burst), self._tokens + elapsed * rps)
        self._last = max(self._last, now)
        allowed = self._tokens >= 1.0
        if allowed:
            self._tokens -= 1.0
        reset = (burst - self._tokens) / rps if rps > 0 else math.inf
        wait = 0.0 if allowed else ((1.0 - self._tokens) / rps if rps > 0 else 3600.0)
        return RateLimitState(allowed, burst, int(self._tokens), min(reset, 86_400.0), min(wait, 3600.0))


@dataclass(frozen=True, slots=True)
class Decision:
    """What the fault injector wants done with one request."""

    status: int | None = None  # an error status to answer with instead of serving the request
    retry_after_ms: int | None = None


class FaultInjector:
    """The stateful side of the faults: seeded RNG, token bucket, forced statuses. Thread-safe."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._bucket = TokenBucket()
        self._display = TokenBucket()
        self._lock = threading.Lock()

    def forced(self, faults: Faults) -> int | None:
        with self._lock:
            return faults.force_status.pop(0) if faults.force_status else None

    def rate_limit(self, faults: Faults, now: float) -> RateLimitState:
        with self._lock:
            if faults.rate_limit_rps is None:
                return self._display.take(now, _DISPLAY_RPS, _DISPLAY_BURST)
            return self._bucket.take(now, faults.rate_limit_rps, faults.rate_limit_burst)

    def random_error(self, faults: Faults) -> int | None:
        if faults.error_rate <= 0:
            return None
        with self._lock:
            if self._rng.random() < faults.error_rate:
                return self._rng.choice((500, 503))
        return None

    def should_truncate(self, faults: Faults) -> bool:
        if faults.truncate_rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < faults.truncate_rate

    def corrupt_items(self, faults: Faults, items: list[Any]) -> list[Any]:
        """Replace some list items with the kinds of garbage a client must survive."""
        if faults.malformed_rate <= 0:
            return items
        out: list[Any] = []
        with self._lock:
            for item in items:
                if self._rng.random() < faults.malformed_rate:
                    out.append(_corrupt(self._rng, item))
                else:
                    out.append(item)
        return out


MALFORMED_KINDS: tuple[str, ...] = ("not_object", "missing_status", "unknown_status", "wrong_type")


def _corrupt(rng: random.Random, item: Any) -> Any:
    kind = rng.choice(MALFORMED_KINDS)
    if kind == "not_object" or not isinstance(item, dict):
        return rng.choice(("garbage", 42, None, ["run"]))
    bad = dict(item)
    if kind == "missing_status":
        bad.pop("status", None)
    elif kind == "unknown_status":
        bad["status"] = "paused"
    else:
        bad["created_at"] = "yesterday"
    return bad
