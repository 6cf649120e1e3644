"""Rate limits within one process: at most N starts per window, per key.

Design decision: a sliding window of start times per key, behind one lock per key so
waiters are served in arrival order and none starves. Time comes from the clock port,
so a test can step a "one call per 60 s" limit without waiting a minute. Limits that
must hold across processes live in the database (the SQL storage); this one is the
in-process layer every executor uses.
"""

from __future__ import annotations

from collections import deque

import anyio

from ._definitions import RateLimit
from .ports import Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """Waits until a call under ``limit`` may start, then records the start."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def acquire(self, limit: RateLimit, default_key: str) -> float:
        """Wait for a free slot; return the seconds waited (by the clock)."""
        key = limit.key or default_key
        lock = self._locks.setdefault(key, anyio.Lock())
        starts = self._starts.setdefault(key, deque())
        first = self._clock.now()
        async with lock:
            while True:
                now = self._clock.now()
                while starts and starts[0] <= now - limit.per_seconds:
                    starts.popleft()
                if len(starts) < limit.calls:
                    starts.append(now)
                    return now - first
                await self._clock.sleep(starts[0] + limit.per_seconds - now)
