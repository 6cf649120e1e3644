"""What a fake-clock driver needs to know: when a run is quiet, and what it waits for.

Quiet: on memory storage ``anyio.wait_all_tasks_blocked()`` says everything waits on
time or on a person; on SQL storage a task awaiting its database (a socket, or
SQLite's worker thread) also counts as blocked, so a driver would move the clock while
work is still being claimed. :class:`WatchedStorage` delegates every port method and
counts the calls in flight, so :func:`settle` waits until the tasks are blocked *and*
none of them on the database.

Waits for: :class:`SteppingClock` remembers the deadlines of its sleepers, so a driver
moving time in fixed ticks can skip the ticks at which nothing would wake — the same
instants as ticking one by one, in far fewer round trips to a database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from stepflow import ItemStatus
from stepflow.ports import Storage
from stepflow.testing import FakeClock

T = TypeVar("T")
_SPINS = 50


class WatchedStorage(Storage):
    """Delegates to ``inner``; ``in_flight`` counts its calls not yet returned."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.in_flight = 0
        self._idle: anyio.Event | None = None

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        self.in_flight += 1
        try:
            return await call()
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()
                self._idle = None

    async def idle(self) -> None:
        """Return once no call is in flight."""
        while self.in_flight:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def create_job(self, job: Any, change: Any) -> Any:
        return await self._call(lambda: self.inner.create_job(job, change))

    async def get_job(self, job_id: str) -> Any:
        return await self._call(lambda: self.inner.get_job(job_id))

    async def progress(self, job_id: str) -> Any:
        return await self._call(lambda: self.inner.progress(job_id))

    async def get_items(self, job_id: str, item_ids: Collection[str]) -> Any:
        return await self._call(lambda: self.inner.get_items(job_id, item_ids))

    async def get_visits(self, job_id: str, step: str, item_ids: Collection[str]) -> Any:
        return await self._call(lambda: self.inner.get_visits(job_id, step, item_ids))

    async def find_visits(
        self, job_id: str, step: str, statuses: Collection[ItemStatus], limit: int
    ) -> Any:
        return await self._call(lambda: self.inner.find_visits(job_id, step, statuses, limit))

    async def list_visits(
        self,
        job_id: str,
        step: str,
        statuses: Collection[ItemStatus] | None,
        after: int,
        limit: int,
    ) -> Any:
        return await self._call(
            lambda: self.inner.list_visits(job_id, step, statuses, after, limit)
        )

    async def item_outputs(self, job_id: str, item_ids: Collection[str]) -> Any:
        return await self._call(lambda: self.inner.item_outputs(job_id, item_ids))

    async def commit(self, change: Any) -> Any:
        return await self._call(lambda: self.inner.commit(change))

    async def get_action(self, job_id: str, action_id: str) -> Any:
        return await self._call(lambda: self.inner.get_action(job_id, action_id))

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> Any:
        return await self._call(lambda: self.inner.claim(owner, limit, lease_seconds))

    async def renew(self, owner: str, held: Sequence[tuple[str, int]], lease_seconds: float) -> Any:
        return await self._call(lambda: self.inner.renew(owner, held, lease_seconds))

    async def release(self, owner: str, held: Sequence[tuple[str, int]]) -> int:
        return await self._call(lambda: self.inner.release(owner, held))

    async def rescue_expired(self, retry_delay: Any) -> int:
        return await self._call(lambda: self.inner.rescue_expired(retry_delay))

    async def next_due(self) -> float | None:
        return await self._call(self.inner.next_due)

    async def read_events(self, job_id: str, after: int, limit: int) -> Any:
        return await self._call(lambda: self.inner.read_events(job_id, after, limit))

    async def now(self) -> float:
        return await self._call(self.inner.now)


async def settle(storage: Storage) -> None:
    """Wait until every task is blocked and, on a watched storage, none on its database."""
    while True:
        # anyio's check sleeps 0.1 s whenever a task can still run; letting the ready
        # ones run first makes that rare. The check below still decides.
        for _ in range(_SPINS):
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        if not isinstance(storage, WatchedStorage) or not storage.in_flight:
            return
        await storage.idle()


class SteppingClock(FakeClock):
    """A fake clock that knows the earliest deadline anyone sleeps until."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self._deadlines: list[float] = []

    async def sleep(self, seconds: float) -> None:
        deadline = self.now() + max(0.0, seconds)
        self._deadlines.append(deadline)
        try:
            await super().sleep(seconds)
        finally:
            self._deadlines.remove(deadline)

    def next_deadline(self) -> float | None:
        return min(self._deadlines, default=None)
