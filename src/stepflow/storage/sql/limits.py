"""Global limits held in the database: rate limits and concurrency caps across processes.

Design decision: every decision about a key is one short write transaction that first
locks the key's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock,
``BEGIN IMMEDIATE``), so any number of processes judge a key one at a time, by the
database clock. A rate limit keeps the key's most recent start times (at most
``calls`` of them) and *reserves* the caller's turn: the earliest time at which the
window of ``per_seconds`` before it holds fewer than ``calls`` starts. The caller then
sleeps until its turn, with no polling and no second transaction; a caller cancelled
while it sleeps gives its turn back. A concurrency cap is a row per slot with its
holder and a lease expiry from the database clock, renewed by a background task while
the holder lives, so a crashed process's slot comes back once its lease runs out. A
caller waiting for a slot sleeps until the earliest lease expiry or a short, growing
poll, and at once when a slot of the same key is freed in its own process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import Connection, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..._definitions import RateLimit
from ...ports import Clock, Limiter, Permit

if TYPE_CHECKING:
    from .store import SQLStorage

__all__ = ["SQLLimiter", "next_turn"]

log = logging.getLogger("stepflow.limits")


def next_turn(
    starts: Sequence[float], now: float, calls: int, per_seconds: float
) -> tuple[float, list[float]]:
    """The earliest turn at or after ``now`` (and after every reserved turn) at which the
    ``per_seconds`` before it hold fewer than ``calls`` of ``starts``; and the starts to
    keep with it (the last ``calls``: older ones cannot limit a later turn).
    """
    recent = sorted(float(t) for t in starts if float(t) > now - per_seconds)
    turn = max([now, *recent[-1:]])
    if len(recent) >= calls:
        turn = max(turn, recent[-calls] + per_seconds)
    return turn, [*recent, turn][-calls:]


class SQLLimiter(Limiter):
    """Limits shared by every process on the storage's database (``storage.limiter()``).

    ``lease_seconds`` is how long a concurrency slot outlives a holder that stopped
    renewing it (a crashed process); ``max_poll`` caps the sleep of a caller waiting
    for a slot held elsewhere.
    """

    def __init__(
        self,
        storage: SQLStorage,
        clock: Clock,
        *,
        lease_seconds: float = 30.0,
        max_poll: float = 1.0,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.storage = storage
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.max_poll = max_poll
        self.owner = uuid.uuid4().hex[:16]
        self._held: dict[tuple[str, int, str], None] = {}  #: (key, slot, holder) held here
        self._freed: dict[str, anyio.Event] = {}
        self._stack: AsyncExitStack | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._renew_forever)
        self._stack = stack

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        held, self._held = list(self._held), {}
        with anyio.CancelScope(shield=True):
            for key, slot, holder in held:
                try:
                    await self._release_slot(key, slot, holder)
                except Exception as exc:  # noqa: BLE001 - the lease will expire
                    log.warning("could not give back slot %s/%d (%s)", key, slot, exc)

    # -- acquiring --------------------------------------------------------------------

    async def acquire(self, limit: RateLimit, default_key: str) -> Permit:
        key = limit.key or default_key
        first = self.clock.now()
        release: Callable[[], Awaitable[None]] | None = None
        if limit.concurrency is not None:
            release = await self._take_slot(key, limit.concurrency)
        try:
            turn = None
            if limit.calls is not None and limit.per_seconds is not None:
                turn = await self._wait_turn(key, limit.calls, limit.per_seconds)
        except BaseException:
            if release is not None:
                with anyio.CancelScope(shield=True):
                    await release()
            raise
        now = self.clock.now()
        return Permit(key, now if turn is None else turn, now - first, release)

    def _lock_key(self, conn: Connection, key: str, now: float) -> Any:
        """Make sure the key's row exists, lock it, and return it."""
        table = self.storage.tables.limits
        dialect = postgresql if not self.storage.is_sqlite else sqlite
        conn.execute(
            dialect.insert(table)
            .values(key=key, starts=[], updated_at=now)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        query = select(table).where(table.c.key == key)
        if not self.storage.is_sqlite:
            query = query.with_for_update()
        return conn.execute(query).one()

    # -- rate -------------------------------------------------------------------------

    async def _wait_turn(self, key: str, calls: int, per_seconds: float) -> float:
        """Reserve the key's next turn, sleep until it, and return it (database clock)."""
        table = self.storage.tables.limits

        def reserve(conn: Connection) -> tuple[float, float]:
            now = self.storage._db_now(conn)
            row = self._lock_key(conn, key, now)
            turn, kept = next_turn(row.starts, now, calls, per_seconds)
            conn.execute(
                update(table).where(table.c.key == key).values(starts=kept, updated_at=now)
            )
            return turn, now

        turn, now = await self.storage._write(reserve)
        if turn <= now:
            return turn
        # With the database clock being this clock (a fake clock in tests) the turn is
        # the deadline; else wait as long from now: late by the transaction's return
        # trip at worst, never early.
        shared_clock = self.storage.clock is self.clock
        deadline = turn if shared_clock else self.clock.now() + (turn - now)
        try:
            while (left := deadline - self.clock.now()) > 0:
                await self.clock.sleep(left)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._give_back_turn(key, turn)
            raise
        return turn

    async def _give_back_turn(self, key: str, turn: float) -> None:
        """Remove a reserved turn nobody will use (its caller was cancelled)."""
        table = self.storage.tables.limits

        def op(conn: Connection) -> None:
            now = self.storage._db_now(conn)
            row = self._lock_key(conn, key, now)
            starts = [float(t) for t in row.starts]
            if turn in starts and turn > now:
                starts.remove(turn)
                conn.execute(update(table).where(table.c.key == key).values(starts=starts))

        try:
            await self.storage._write(op)
        except Exception as exc:  # noqa: BLE001 - a lost turn only slows the key down
            log.warning("could not give back a rate-limit turn of %s (%s)", key, exc)

    # -- concurrency ------------------------------------------------------------------

    async def _take_slot(self, key: str, cap: int) -> Callable[[], Awaitable[None]]:
        holder = f"{self.owner}:{uuid.uuid4().hex[:16]}"
        slots = self.storage.tables.limit_slots

        def take(conn: Connection) -> tuple[int | None, float, float | None]:
            now = self.storage._db_now(conn)
            self._lock_key(conn, key, now)
            rows = conn.execute(select(slots).where(slots.c.key == key)).all()
            live = {
                r.slot: r.expires_at
                for r in rows
                if r.holder is not None and r.expires_at is not None and r.expires_at > now
            }
            if len(live) >= cap:
                return None, now, min(live.values())
            slot = next(n for n in range(cap) if n not in live)  # fewer than cap are live
            values = {"holder": holder, "expires_at": now + self.lease_seconds}
            if any(r.slot == slot for r in rows):
                conn.execute(
                    update(slots).where(slots.c.key == key, slots.c.slot == slot).values(**values)
                )
            else:
                conn.execute(slots.insert().values(key=key, slot=slot, **values))
            return slot, now, None

        poll = 0.02
        while True:
            freed = self._freed.get(key)
            if freed is None:
                freed = self._freed[key] = anyio.Event()
            slot, now, soonest = await self.storage._write(take)
            if slot is not None:
                break
            assert soonest is not None
            delay = min(poll, max(0.0, soonest - now))
            poll = min(poll * 2, self.max_poll)
            await self._sleep_or_freed(delay, freed)
        self._held[(key, slot, holder)] = None

        async def release() -> None:
            self._held.pop((key, slot, holder), None)
            await self._release_slot(key, slot, holder)

        return release

    async def _sleep_or_freed(self, delay: float, freed: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:

            async def sleep() -> None:
                await self.clock.sleep(delay)
                tg.cancel_scope.cancel()

            tg.start_soon(sleep)
            await freed.wait()
            tg.cancel_scope.cancel()

    async def _release_slot(self, key: str, slot: int, holder: str) -> None:
        slots = self.storage.tables.limit_slots

        def op(conn: Connection) -> None:
            conn.execute(
                update(slots)
                .where(slots.c.key == key, slots.c.slot == slot, slots.c.holder == holder)
                .values(holder=None, expires_at=None)
            )

        await self.storage._write(op)
        freed = self._freed.pop(key, None)
        if freed is not None:
            freed.set()

    async def _renew_forever(self) -> None:
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - the database went away: next beat
                log.warning("renewing limit slots failed (%s); trying again", exc)

    async def renew(self) -> int:
        """Extend the leases of the slots held here; return how many are still held."""
        held = list(self._held)
        if not held:
            return 0
        slots = self.storage.tables.limit_slots

        def op(conn: Connection) -> int:
            now = self.storage._db_now(conn)
            kept = 0
            for key, slot, holder in held:
                result = conn.execute(
                    update(slots)
                    .where(
                        and_(
                            slots.c.key == key,
                            slots.c.slot == slot,
                            slots.c.holder == holder,
                            slots.c.expires_at > now,
                        )
                    )
                    .values(expires_at=now + self.lease_seconds)
                )
                if result.rowcount:
                    kept += 1
                else:
                    log.warning("limit slot %s/%d was lost (its lease expired)", key, slot)
            return kept

        return await self.storage._write(op)
