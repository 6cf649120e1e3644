"""Global limits held in the database: rates and concurrency caps shared by every process.

Two limiters on two storages of one database stand for two processes: they share
nothing but the database. Rate limits run on a fake clock (a storage on a fake clock
uses it as the database clock), so "one call per 60 s" is stepped, not waited for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepflow import Handlers, JobStatus, Orchestrator, Pipeline, RateLimit
from stepflow.ports import Clock, Permit
from stepflow.storage.sql import SQLStorage
from stepflow.storage.sql.limits import SQLLimiter, next_turn
from stepflow.testing import FakeClock

from ..backends import postgres_schema

pytestmark = pytest.mark.anyio

StorageMaker = Callable[[Clock | None], SQLStorage]


@pytest.fixture(params=["sqlite", "postgres"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A function making storages on one shared database (one per "process")."""
    if request.param == "sqlite":
        path = str(tmp_path / "limits.db")
        yield lambda clock: SQLStorage(path, clock=clock)
        return
    url = request.getfixturevalue("postgres_url")
    with postgres_schema(url) as schema:
        yield lambda clock: SQLStorage(url, schema=schema, clock=clock)


@asynccontextmanager
async def limiters(
    make_storage: StorageMaker, count: int, clock: Clock | None = None, **options: Any
) -> AsyncIterator[list[SQLLimiter]]:
    """``count`` started limiters, each on its own storage of the shared database."""
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(count):
            storage = make_storage(clock)
            await storage.start()
            stack.push_async_callback(storage.aclose)
            limiter = storage.limiter(clock, **options)
            await limiter.start()
            stack.push_async_callback(limiter.aclose)
            found.append(limiter)
        yield found


def live_slots(storage: SQLStorage, key: str) -> int:
    """How many slots of ``key`` the database shows held (by anyone) right now."""
    import sqlalchemy as sa

    slots = storage.tables.limit_slots
    query = sa.select(sa.func.count()).where(slots.c.key == key, slots.c.holder.is_not(None))
    with storage.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


# -- the rule, as a pure function ------------------------------------------------------


@given(
    calls=st.integers(1, 5),
    per_seconds=st.sampled_from([1.0, 7.5, 60.0]),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.5, 3.0, 61.0]), min_size=1, max_size=40),
)
def test_turns_never_crowd_a_window_and_come_as_early_as_they_may(
    calls: int, per_seconds: float, gaps: list[float]
) -> None:
    """Reserved turns never put more than ``calls`` in any window, and none is late."""
    starts: list[float] = []
    turns: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        turn, starts = next_turn(starts, now, calls, per_seconds)
        assert turn >= now and (not turns or turn >= turns[-1])
        earlier = [t for t in turns if t > turn - per_seconds]
        assert len(earlier) < calls  # room in the window that ends at the turn
        if turn > max(now, turns[-1] if turns else now):
            # Any earlier moment would have been crowded: the turn is the earliest.
            crowded = [t for t in turns if t > turn - per_seconds - 1e-9]
            assert len(crowded) >= calls
        turns.append(turn)
        assert len(starts) <= calls


# -- rates across processes -----------------------------------------------------------


async def test_one_call_per_minute_holds_across_two_processes(
    make_storage: StorageMaker,
) -> None:
    """One call per 60 s: a second process's call starts 60 s after the first's, not before."""
    clock = FakeClock()
    t0 = clock.now()
    limit = RateLimit(calls=1, per_seconds=60, key="geocoder")
    async with limiters(make_storage, 2, clock) as (first, second):
        permit = await first.acquire(limit, "handler")
        assert permit.turn == t0
        started: list[float] = []

        async def other() -> None:
            got = await second.acquire(limit, "handler")
            started.append(clock.now())
            assert got.turn == t0 + 60

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            clock.advance(30)
            clock.advance(30)
    assert started and started[0] >= t0 + 60


async def test_ten_calls_a_minute_across_two_processes(make_storage: StorageMaker) -> None:
    """25 calls through two processes under "10 per minute" start 10, 10 and 5 a minute apart."""
    clock = FakeClock()
    t0 = clock.now()
    limit = RateLimit(calls=10, per_seconds=60, key="mailer")
    send, receive = anyio.create_memory_object_stream[tuple[float, float]](25)
    async with send, receive, limiters(make_storage, 2, clock) as pair:

        async def call(n: int) -> None:
            permit = await pair[n % 2].acquire(limit, "handler")
            await send.send((permit.turn - t0, clock.now() - t0))

        async with anyio.create_task_group() as tg:
            for n in range(25):
                tg.start_soon(call, n)
            got = [await receive.receive() for _ in range(10)]
            clock.advance(60)
            got += [await receive.receive() for _ in range(10)]
            clock.advance(60)
            got += [await receive.receive() for _ in range(5)]
    turns = sorted(turn for turn, _ in got)
    assert turns == [0.0] * 10 + [60.0] * 10 + [120.0] * 5
    assert all(started >= turn for turn, started in got)  # nobody started before its turn


async def test_a_cancelled_wait_gives_its_turn_back(make_storage: StorageMaker) -> None:
    """A call cancelled while it waits for its turn leaves that turn to the next caller."""
    clock = FakeClock()
    t0 = clock.now()
    limit = RateLimit(calls=1, per_seconds=60, key="k")
    async with limiters(make_storage, 2, clock) as (first, second):
        await first.acquire(limit, "h")
        with anyio.move_on_after(0.2):  # real time: the fake clock never reaches 60 here
            await second.acquire(limit, "h")
            pytest.fail("the turn came although the clock did not move")
        async with anyio.create_task_group() as tg:

            async def again() -> None:
                permit = await first.acquire(limit, "h")
                assert permit.turn == t0 + 60  # not t0 + 120: the cancelled turn is free

            tg.start_soon(again)
            clock.advance(60)


# -- concurrency caps across processes -----------------------------------------------


async def test_a_concurrency_cap_holds_across_two_processes(make_storage: StorageMaker) -> None:
    """With 2 slots held by one process, the other gets one only when a slot is released."""
    limit = RateLimit(concurrency=2, key="printer")
    async with limiters(make_storage, 2) as (first, second):
        held = [await first.acquire(limit, "h"), await first.acquire(limit, "h")]
        assert live_slots(first.storage, "printer") == 2
        with anyio.move_on_after(0.3):
            await second.acquire(limit, "h")
            pytest.fail("a third slot was handed out under a cap of 2")
        assert live_slots(first.storage, "printer") == 2  # the cancelled wait took nothing
        await held[0].release()
        with anyio.fail_after(10):
            permit = await second.acquire(limit, "h")
        assert live_slots(first.storage, "printer") == 2
        await permit.release()
        await held[1].release()
        await held[1].release()  # releasing twice changes nothing
        assert live_slots(first.storage, "printer") == 0


async def test_a_crashed_holders_slot_comes_back_when_its_lease_expires(
    make_storage: StorageMaker,
) -> None:
    """A slot whose holder stopped renewing (a killed process) is free after its lease."""
    limit = RateLimit(concurrency=1, key="only-one")
    async with limiters(make_storage, 1, lease_seconds=60) as (survivor,):
        crashed_storage = make_storage(None)
        await crashed_storage.start()
        crashed = crashed_storage.limiter(lease_seconds=0.5)  # never started: no renewal
        await crashed.acquire(limit, "h")
        await crashed_storage.aclose()  # gone without releasing, as after kill -9
        with anyio.fail_after(10):
            permit = await survivor.acquire(limit, "h")
        assert live_slots(survivor.storage, "only-one") == 1
        await permit.release()


async def test_renewal_keeps_a_live_holders_slot(make_storage: StorageMaker) -> None:
    """A holder that renews keeps its slot past the lease; one that stopped loses it."""
    limit = RateLimit(concurrency=1, key="renewed")
    async with limiters(make_storage, 2, lease_seconds=0.4) as (holder, other):
        permit = await holder.acquire(limit, "h")
        assert await holder.renew() == 1
        with anyio.move_on_after(1.0):  # over two leases: renewal must keep the slot
            await other.acquire(limit, "h")
            pytest.fail("a renewed slot was taken over")
        await permit.release()
        with anyio.fail_after(10):
            taken = await other.acquire(limit, "h")
        await taken.release()


async def test_aclose_gives_back_every_slot(make_storage: StorageMaker) -> None:
    """Closing a limiter releases the slots it still holds."""
    limit = RateLimit(concurrency=3, key="closing")
    async with limiters(make_storage, 1) as (probe,):
        async with limiters(make_storage, 1) as (closing,):
            held: list[Permit] = [await closing.acquire(limit, "h") for _ in range(3)]
            assert live_slots(probe.storage, "closing") == 3
        assert all(not p.released for p in held)  # released by aclose, not by the caller
        assert live_slots(probe.storage, "closing") == 0


# -- through orchestrators ------------------------------------------------------------


async def test_two_orchestrators_share_a_handlers_concurrency_cap(
    make_storage: StorageMaker,
) -> None:
    """Two orchestrators on one database never run more than the cap's calls at once."""
    running = 0
    most = 0

    async def call(ctx: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.02)  # the handler's own work, long enough to overlap
        running -= 1

    handlers = Handlers()
    handlers.add("call", call)
    pipeline = Pipeline.load(
        {
            "name": "p",
            "steps": [
                {"key": "a", "handler": "call", "concurrency": 10, "rate_limit": {"concurrency": 2}}
            ],
        }
    )
    one = Orchestrator(make_storage(None), handlers=handlers, pipelines=[pipeline])
    two = Orchestrator(make_storage(None), handlers=handlers, pipelines=[pipeline])
    async with one, two:
        jobs = [await one.create_job("p", [{"key": f"i{n}"} for n in range(10)]) for _ in "ab"]
        done = [await two.wait(job.id, timeout=60) for job in jobs]
    assert [s.job.status for s in done] == [JobStatus.COMPLETED] * 2
    assert 1 <= most <= 2
