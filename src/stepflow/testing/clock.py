"""A clock that moves only when a test says so.

Design decision: retry waits, rate limits and leases all read the clock port, so a test
can check "the second attempt starts 2 s after the first" by advancing this clock,
without sleeping and without races. Sleepers wake when :meth:`FakeClock.advance` moves
time past their deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ..ports import Clock

__all__ = ["FakeClock"]


class FakeClock(Clock):
    """Starts at ``start`` (Unix seconds) and moves only by :meth:`advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._moved: anyio.Event | None = None  # created inside the event loop
        self._callbacks: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        while self._now < deadline:
            if self._moved is None:
                self._moved = anyio.Event()
            await self._moved.wait()
        await anyio.lowlevel.checkpoint()

    def timeout_seconds(self, deadline: float) -> float | None:
        return 0.0 if deadline <= self._now else None

    def on_advance(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake everything waiting on it."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()
        for callback in self._callbacks:
            callback()
