"""Two SQL storages on one database, as two processes: each sees what the other wrote.

A writer keeps the state of the jobs it last committed and trusts it only while the
job's stored ``seq`` is unchanged; these tests interleave two writers on one job so a
stale copy would show as wrong counters, wrong statuses or a broken event sequence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError

from stepflow import ItemStatus, JobStatus
from stepflow._records import ChangeSet, Claim
from stepflow.ports import Clock, Storage
from stepflow.storage.sql import SQLStorage
from stepflow.testing import FakeClock
from stepflow.testing.contract import _creation, _job, _result

from ..backends import storage_factory

pytestmark = pytest.mark.anyio
I = ItemStatus


@pytest.fixture(params=["sqlite", "postgres"])
async def two(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Storage, Storage, FakeClock]]:
    """Two storages on one fresh database, sharing a fake clock."""
    clock = FakeClock()
    with storage_factory(request.param, tmp_path, request) as factory:
        make: Callable[[Clock | None], Storage] = factory
        first, second = make(clock), make(clock)
        await first.start()
        await second.start()
        try:
            yield first, second, clock
        finally:
            await first.aclose()
            await second.aclose()


def _done(claim: Claim, status: ItemStatus = I.PROCESSED) -> ChangeSet:
    """The result that ends ``claim`` in ``status``."""
    return _result(claim, status, {"lease_owner": None, "lease_expires_at": None})


async def test_writers_taking_turns_on_one_job_keep_it_exact(
    two: tuple[Storage, Storage, FakeClock],
) -> None:
    """Writes alternating between two storages leave exact counters, statuses and gapless
    events, whichever wrote last."""
    a, b, clock = two
    job = _job(concurrency=5)
    await a.create_job(job, _creation(job, 4, clock.now()))
    claims = await b.claim("b", 2, 30.0)  # b moves the job past what a remembers
    [mine] = await a.claim("a", 1, 30.0)
    assert mine.visit.id not in {c.visit.id for c in claims}
    await a.commit(_done(claims[0]))
    await b.commit(_done(mine))
    await a.commit(_done(claims[1], I.FAILED))
    for reader in (a, b):
        progress = await reader.progress(job.id)
        counts = {status: n for status, n in progress.counts["a"].items() if n}
        assert counts == {I.AVAILABLE: 1, I.PROCESSED: 2, I.FAILED: 1}
        assert progress.job.status is JobStatus.IN_PROGRESS
        events = await reader.read_events(job.id, 0, 1000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].seq == progress.job.seq


async def test_a_writer_claims_by_the_other_writers_counters(
    two: tuple[Storage, Storage, FakeClock],
) -> None:
    """A step's concurrency holds across writers: what one claimed, the other counts."""
    a, b, clock = two
    job = _job(concurrency=2)
    await a.create_job(job, _creation(job, 5, clock.now()))
    assert len(await a.claim("a", 1, 30.0)) == 1
    assert len(await b.claim("b", 5, 30.0)) == 1
    assert await a.claim("a", 5, 30.0) == []
    progress = await b.progress(job.id)
    assert progress.counts["a"][I.PROCESSING] == 2


async def test_a_row_the_database_refuses_sinks_only_its_own_change(
    two: tuple[Storage, Storage, FakeClock],
) -> None:
    """A value the database refuses while a batch is written (PostgreSQL's JSON refuses
    a NUL character; its writes are sent together) fails that change alone."""
    a, _, clock = two
    job = _job(concurrency=5)
    await a.create_job(job, _creation(job, 2, clock.now()))
    first, second = await a.claim("a", 2, 30.0)
    bad = _result(first, I.PROCESSED, {"output": {"text": "nul \x00 here"}})
    good = _done(second)
    results, _ = await a.exchange([bad, good], "a", 0, 30.0)
    # The same refusal in the batch's last statement, whose reply comes at the very end.
    noted = ChangeSet(job.id, action_id="note", action_result={"text": "nul \x00 here"})
    [late] = (await a.exchange([noted], "a", 0, 30.0))[0]
    assert not isinstance(results[1], Exception)
    progress = await a.progress(job.id)
    counts = {status: n for status, n in progress.counts["a"].items() if n}
    if isinstance(results[0], Exception):  # PostgreSQL
        assert isinstance(results[0], DataError) and isinstance(late, DataError)
        assert counts == {I.PROCESSING: 1, I.PROCESSED: 1}
    else:  # SQLite stores the character
        assert not isinstance(late, Exception)
        assert counts == {I.PROCESSED: 2}
    events = await a.read_events(job.id, 0, 1000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_two_storages_tell_the_time_by_the_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each storage's clock follows the database's (PostgreSQL's is read now and then and
    followed locally in between): two storages agree with it to within milliseconds."""
    with storage_factory(backend, tmp_path, request) as make:
        first, second = make(None), make(None)
        await first.start()
        await second.start()
        try:
            readings = [(await first.now(), await second.now()) for _ in range(20)]
            for mine, theirs in readings:
                assert abs(mine - theirs) < 0.05
            assert [r[0] for r in readings] == sorted(r[0] for r in readings)
            if backend == "postgres":
                assert isinstance(first, SQLStorage)
                with first.engine.connect() as conn:
                    query = text("SELECT EXTRACT(epoch FROM clock_timestamp())")
                    database = float(conn.execute(query).scalar_one())
                assert abs(await first.now() - database) < 0.05
        finally:
            await first.aclose()
            await second.aclose()


async def test_a_read_on_a_connection_that_died_runs_again(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A pooled PostgreSQL connection killed while idle for less than the check interval
    fails its next read once; the storage runs that read again on a fresh connection."""
    with storage_factory("postgres", tmp_path, request) as make:
        storage = make(None)
        await storage.start()
        try:
            assert isinstance(storage, SQLStorage)
            job = _job()
            await storage.create_job(job, _creation(job, 1, 0.0))
            with storage.engine.connect() as first, storage.engine.connect() as second:
                pids = [
                    conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                    for conn in (first, second)
                ]
            url = storage.engine.url.set(drivername="postgresql")
            with psycopg.connect(url.render_as_string(hide_password=False)) as killer:
                for pid in pids:  # both die while idle in the pool (waits until gone)
                    killer.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
            assert (await storage.get_job(job.id)).id == job.id
        finally:
            await storage.aclose()
