"""Limits in one process, and the bridge that hands a call's permit back when it ends.

Design decision: :class:`RateLimiter` is the in-process :class:`~stepflow.ports.Limiter`:
a sliding window of start times per key behind one lock per key (waiters are served
in arrival order and none starves), and a count of running calls per key for the
concurrency cap. Time comes from the clock port, so a test steps a "one call per 60 s"
limit without waiting a minute. Limits that must hold across processes live in the
database: a storage offers such a limiter through ``Storage.limiter``, and the
orchestrator takes it when there is one.

The engine asks for a permit just before a handler call and the call runs in the
same task, inside the executor. :class:`CallPermits` keeps the permit in a context
variable of that task and :class:`ReleasingExecutor` gives it back as soon as the
call returns or raises, so a concurrency slot is held exactly for the call (not for
a retry's wait), whatever limiter is behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import anyio

from ._definitions import RateLimit
from .ports import Clock, Executor, Limiter, Permit

__all__ = ["CallPermits", "RateLimiter", "ReleasingExecutor"]

#: The permit the current task took for the handler call it is about to make.
_held: ContextVar[Permit | None] = ContextVar("stepflow_held_permit", default=None)


class RateLimiter(Limiter):
    """The in-process limiter: waits until a call under a limit may start."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._running: dict[str, int] = {}
        self._freed: dict[str, anyio.Event] = {}

    async def acquire(self, limit: RateLimit, default_key: str) -> Permit:
        key = limit.key or default_key
        first = self._clock.now()
        release = None
        if limit.concurrency is not None:
            await self._take_slot(key, limit.concurrency)
            release = self._slot_releaser(key)
        try:
            if limit.calls is not None and limit.per_seconds is not None:
                await self._wait_turn(key, limit.calls, limit.per_seconds)
        except BaseException:
            if release is not None:
                await release()
            raise
        now = self._clock.now()
        return Permit(key, now, now - first, release)

    async def _wait_turn(self, key: str, calls: int, per_seconds: float) -> None:
        lock = self._locks.setdefault(key, anyio.Lock())
        starts = self._starts.setdefault(key, deque())
        async with lock:
            while True:
                now = self._clock.now()
                while starts and starts[0] <= now - per_seconds:
                    starts.popleft()
                if len(starts) < calls:
                    starts.append(now)
                    return
                await self._clock.sleep(starts[0] + per_seconds - now)

    async def _take_slot(self, key: str, cap: int) -> None:
        while self._running.get(key, 0) >= cap:
            freed = self._freed.get(key)
            if freed is None:
                freed = self._freed[key] = anyio.Event()
            await freed.wait()
        self._running[key] = self._running.get(key, 0) + 1

    def _slot_releaser(self, key: str) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            self._running[key] -= 1
            freed = self._freed.pop(key, None)
            if freed is not None:
                freed.set()

        return release


class CallPermits(Limiter):
    """Keeps each permit for the task that took it, for :class:`ReleasingExecutor`."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def acquire(self, limit: RateLimit, default_key: str) -> Permit:
        await release_held()  # a permit whose call never ran goes back first
        permit = await self.inner.acquire(limit, default_key)
        _held.set(permit)
        return permit


async def release_held() -> None:
    """Give back the permit the current task holds, if any."""
    permit = _held.get()
    if permit is not None:
        _held.set(None)
        with anyio.CancelScope(shield=True):
            await permit.release()


class ReleasingExecutor(Executor):
    """Runs calls on ``inner``; when one ends, releases the permit its task took."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    async def run(self, func: Callable[[Any], Any], argument: Any, *, is_async: bool) -> Any:
        permit = _held.get()
        _held.set(None)
        try:
            return await self.inner.run(func, argument, is_async=is_async)
        finally:
            if permit is not None:
                with anyio.CancelScope(shield=True):
                    await permit.release()
