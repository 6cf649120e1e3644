"""The in-process event broker.

Design decision: a broker only shortens waits — readers always re-read storage — so the
local broker keeps no queue at all: one anyio ``Event`` per watched job and one for
"work may be claimable", replaced each time it fires. A lost or merged notification
costs nothing but a re-read.
"""

from __future__ import annotations

import anyio

from ..ports import EventBroker

__all__ = ["LocalEventBroker"]


class LocalEventBroker(EventBroker):
    """Notifications between tasks of one event loop."""

    def __init__(self) -> None:
        self._job_seq: dict[str, int] = {}
        self._job_events: dict[str, anyio.Event] = {}
        self._work: anyio.Event | None = None  # created inside the event loop
        self._work_pending = False

    def publish_job(self, job_id: str, seq: int) -> None:
        if seq > self._job_seq.get(job_id, 0):
            self._job_seq[job_id] = seq
        event = self._job_events.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait_job(self, job_id: str, after: int, timeout: float | None) -> bool:
        if self._job_seq.get(job_id, 0) > after:
            return True
        event = self._job_events.get(job_id)
        if event is None:
            event = self._job_events[job_id] = anyio.Event()
        with anyio.move_on_after(timeout):
            await event.wait()
            return True
        return False

    def publish_work(self) -> None:
        self._work_pending = True
        if self._work is not None:
            self._work.set()

    async def wait_work(self, timeout: float | None) -> bool:
        if not self._work_pending:
            if self._work is None or self._work.is_set():
                self._work = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._work.wait()
        woken, self._work_pending = self._work_pending, False
        return woken
