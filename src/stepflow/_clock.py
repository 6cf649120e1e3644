"""The real clock.

Design decision: time is a port (:class:`stepflow.ports.Clock`) so retry waits, rate
limits and leases can be tested with a fake clock that moves only when a test says so;
this is the one implementation that reads the system's time.
"""

from __future__ import annotations

import time

import anyio

from .ports import Clock

__all__ = ["SystemClock"]


class SystemClock(Clock):
    """Wall-clock time (``time.time``) and anyio sleeps."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))
