"""Client-side request pacing: a token bucket that can be paused and slowed down (AIMD)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Float rounding can leave a bucket a hair short of a token after exactly the right wait;
# sleeping for that hair may not move the clock at all, so treat it as a whole token.
_EPSILON = 1e-9


class TokenBucket:
    """Hands out at most `rate` permits per second on average, with bursts of up to `burst`.

    All waiters queue on one lock, so permits are granted in arrival order and a pause
    (`pause_until`) holds back every caller, not only the one that saw the 429.
    The rate follows AIMD: `slow_down` halves it, `recover` adds back a small step.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Clock,
        sleep: Sleep,
        *,
        min_rate: float | None = None,
        recovery_step: float | None = None,
    ) -> None:
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("rate must be a positive number")
        if not math.isfinite(burst) or burst < 1:
            raise ValueError("burst must be at least 1")
        self._max_rate = rate
        self._min_rate = min(rate, min_rate if min_rate is not None else rate / 32)
        self._step = recovery_step if recovery_step is not None else rate / 20
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._resume_at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def max_rate(self) -> float:
        return self._max_rate

    @property
    def min_rate(self) -> float:
        return self._min_rate

    @property
    def paused_until(self) -> float:
        return self._resume_at

    async def acquire(self) -> None:
        """Wait for one permit (and for any pause to end)."""
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._resume_at:
                    await self._sleep(self._resume_at - now)
                    continue
                self._refill(now)
                if self._tokens >= 1.0 - _EPSILON:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await self._sleep((1.0 - self._tokens) / self._rate)

    def pause_until(self, deadline: float) -> None:
        """Grant nothing before `deadline`; then one permit at once and the rest at `rate` (no burst)."""
        if deadline > self._resume_at:
            self._resume_at = deadline
            self._tokens = 1.0
            self._last = max(self._last, deadline)

    def slow_down(self, factor: float = 0.5) -> None:
        """Multiplicative decrease, after the server said we are too fast."""
        self._refill(self._clock())  # tokens earned so far were earned at the old rate
        self._rate = max(self._min_rate, self._rate * factor)

    def recover(self) -> None:
        """Additive increase, after a request the server accepted."""
        if self._rate < self._max_rate:
            self._refill(self._clock())
            self._rate = min(self._max_rate, self._rate + self._step)

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
