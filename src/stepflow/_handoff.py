"""The queue between the engine's one writer and its long-lived worker tasks.

Design decision: a claim is handed to a worker for every item-step transition, so the
hand-off is on the hot path of every workload. An anyio memory stream yields to the
event loop on every receive, even when a claim is already waiting; this queue does not:
a worker takes the next waiting claim at once and waits (on an anyio event) only when
there is none. A put wakes one waiting worker; a wake-up that finds nothing (another
worker took the claim first) just waits again, and a worker cancelled after being woken
passes the wake-up on, so no claim waits while a worker sleeps.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio

__all__ = ["Handoff"]

T = TypeVar("T")


class Handoff(Generic[T]):
    """Unbounded first-in, first-out hand-off from one producer to many consumers."""

    def __init__(self) -> None:
        self._waiting_items: deque[T] = deque()
        self._sleepers: deque[anyio.Event] = deque()

    def __len__(self) -> int:
        return len(self._waiting_items)

    def put(self, item: T) -> None:
        """Queue ``item`` and wake one waiting consumer (never blocks)."""
        self._waiting_items.append(item)
        self._wake_one()

    def take_all(self) -> list[T]:
        """Remove and return everything still queued (at shutdown)."""
        items = list(self._waiting_items)
        self._waiting_items.clear()
        return items

    async def get(self) -> T:
        """The next item, at once when one waits; else wait for one."""
        while not self._waiting_items:
            woken = anyio.Event()
            self._sleepers.append(woken)
            try:
                await woken.wait()
            except BaseException:
                if woken.is_set():
                    self._wake_one()  # woken and cancelled: let another worker take it
                else:
                    self._sleepers.remove(woken)
                raise
        return self._waiting_items.popleft()

    def _wake_one(self) -> None:
        while self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.is_set():
                sleeper.set()
                return
