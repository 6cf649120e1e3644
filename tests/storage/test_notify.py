"""Wake-ups across processes: PostgreSQL LISTEN/NOTIFY and Unix datagrams for SQLite."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from stepflow import Handlers, InvalidInput, JobStatus, Orchestrator, Pipeline
from stepflow.brokers import (
    LocalEventBroker,
    PostgresEventBroker,
    RelayBroker,
    SocketEventBroker,
    channel_name,
    default_broker,
    wake_folder,
)
from stepflow.brokers._relay import decode_message, encode_messages
from stepflow.storage.sql import SQLStorage
from stepflow.testing import MemoryStorage

from ..backends import postgres_schema

pytestmark = pytest.mark.anyio


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    with postgres_schema(postgres_url) as name:
        yield name


@asynccontextmanager
async def started(*brokers: RelayBroker) -> AsyncIterator[None]:
    """Start the brokers and wait (bounded) until each one's link is up."""
    try:
        for broker in brokers:
            await broker.start()
        for broker in brokers:
            await until(broker, lambda b=broker: b.connected)
        yield
    finally:
        for broker in reversed(brokers):
            await broker.aclose()


async def until(broker: RelayBroker, condition: Any, timeout: float = 20.0) -> None:
    """Wait until ``condition()`` holds, looking again at each change of ``broker``'s link."""
    with anyio.fail_after(timeout):
        while not condition():
            await broker.link_changed()


# -- names and messages ------------------------------------------------------------------


def test_channel_names_are_scoped_by_schema_and_prefix() -> None:
    """Each schema and prefix gets its own channel, a plain identifier under 64 bytes."""
    names = {
        channel_name(prefix, schema)
        for prefix in ("stepflow_", "app_", "", "p" * 41)
        for schema in (None, "one", "two", "s" * 41)
    }
    assert len(names) == 16
    assert all(len(name) <= 63 and name.isidentifier() for name in names)
    assert channel_name("stepflow_", None).startswith("stepflow_wake_")


@pytest.mark.parametrize("bad", ['x"; drop table t; --', "Upper", "a" * 64, "9starts"])
def test_a_bad_channel_name_is_refused(bad: str) -> None:
    """A channel outside the identifier pattern is InvalidInput before any connection."""
    with pytest.raises(InvalidInput, match="must match"):
        PostgresEventBroker("postgresql://nobody@127.0.0.1:1/none", channel=bad)


def test_messages_carry_ids_only_and_stay_under_the_limit() -> None:
    """A burst of 2,000 job notices splits into messages under the limit, losing none."""
    jobs = {f"{n:032x}": n + 1 for n in range(2000)}
    messages = encode_messages("origin", jobs, True, 7900)
    assert len(messages) > 1
    assert all(len(m.encode()) <= 7900 for m in messages)
    seen: dict[str, int] = {}
    work = False
    for message in messages:
        decoded = decode_message(message)
        assert decoded is not None
        origin, found, flag = decoded
        assert origin == "origin"
        seen.update(found)
        work = work or flag
        assert set(json.loads(message)) <= {"o", "w", "j"}
    assert seen == jobs and work


@pytest.mark.parametrize(
    "junk", [b"", b"not json", b"[1,2]", b'{"j": {}}', b'{"o": "x", "j": [1]}', b"\xff\xfe"]
)
def test_malformed_messages_are_ignored(junk: bytes) -> None:
    """Garbage on the channel (or a stray datagram) decodes to nothing."""
    assert decode_message(junk) is None


def test_wrong_value_types_are_dropped() -> None:
    """Job notices whose sequence is not an integer are left out."""
    decoded = decode_message(b'{"o": "x", "j": {"a": 1, "b": "2", "c": true}, "w": 1}')
    assert decoded == ("x", {"a": 1}, True)


async def test_local_publishes_arrive_at_once_without_a_link() -> None:
    """A relay broker delivers in its own process even when its link is down."""
    broker = PostgresEventBroker("postgresql://nobody@127.0.0.1:1/none")
    broker.publish_work()
    broker.publish_job("job", 3)
    assert await broker.wait_work(timeout=0)
    assert await broker.wait_job("job", 2, timeout=0)
    assert not broker.connected


async def test_waits_poll_while_disconnected() -> None:
    """With the link down a wait without timeout ends after the polling interval."""
    broker = PostgresEventBroker("postgresql://nobody@127.0.0.1:1/none")
    broker.disconnected_poll = 0.05
    with anyio.fail_after(10):
        assert await broker.wait_work(timeout=None) is False
        assert await broker.wait_job("job", 0, timeout=None) is False


# -- defaults ----------------------------------------------------------------------------


def test_default_brokers(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL gets NOTIFY, a SQLite file gets sockets, memory stays local."""
    assert isinstance(default_broker(MemoryStorage()), LocalEventBroker)
    assert isinstance(default_broker(SQLStorage("sqlite://")), LocalEventBroker)
    on_file = default_broker(SQLStorage(str(tmp_path / "x.db")))
    assert isinstance(on_file, SocketEventBroker)
    assert on_file.folder == wake_folder(tmp_path / "x.db")
    on_postgres = default_broker(SQLStorage(postgres_url, schema="s1", prefix="app_"))
    assert isinstance(on_postgres, PostgresEventBroker)
    assert on_postgres.channel == channel_name("app_", "s1")


def test_orchestrator_on_postgres_listens_and_polls_slowly(postgres_url: str) -> None:
    """An orchestrator on PostgreSQL uses NOTIFY, and polls only as a slow fallback."""
    orch = Orchestrator(SQLStorage(postgres_url))
    assert isinstance(orch.broker, PostgresEventBroker)
    assert orch.engine.poll_interval == orch.broker.fallback_poll > 1.0
    given = LocalEventBroker()
    assert Orchestrator(SQLStorage(postgres_url), broker=given).broker is given


def test_a_long_database_path_moves_the_folder(tmp_path: Path) -> None:
    """A database too deep for socket addresses gets its folder in the temp directory."""
    deep = tmp_path.joinpath(*["d" * 40] * 4) / "jobs.db"
    folder = wake_folder(deep)
    assert folder != deep.with_name("jobs.db.wake")
    assert wake_folder(deep) == folder  # every process finds the same one
    assert len(str(folder)) < 100


# -- PostgreSQL ---------------------------------------------------------------------------


async def test_a_publish_wakes_another_listener(postgres_url: str, schema: str) -> None:
    """publish_work and publish_job in one broker wake the waits of another."""
    sender = PostgresEventBroker(postgres_url, schema=schema)
    receiver = PostgresEventBroker(postgres_url, schema=schema)
    async with started(sender, receiver):
        sender.publish_work()
        assert await receiver.wait_work(timeout=20)
        sender.publish_job("job-1", 7)
        assert await receiver.wait_job("job-1", 6, timeout=20)
        assert sender.received == 0  # its own messages are not delivered back


async def test_a_burst_is_merged_and_nothing_is_lost(postgres_url: str, schema: str) -> None:
    """500 publishes in one burst go out in a few NOTIFYs, and every job's seq arrives."""
    sender = PostgresEventBroker(postgres_url, schema=schema)
    receiver = PostgresEventBroker(postgres_url, schema=schema)
    async with started(sender, receiver):
        for n in range(500):
            sender.publish_job(f"{n:032x}", 1)
            sender.publish_job(f"{n:032x}", 2)
        sender.publish_work()
        assert await receiver.wait_work(timeout=20)
        for n in range(500):
            assert await receiver.wait_job(f"{n:032x}", 1, timeout=20)
        assert sender.sent < 20


async def test_other_schemas_are_not_woken(postgres_url: str, schema: str) -> None:
    """A broker of another schema on the same database receives nothing."""
    sender = PostgresEventBroker(postgres_url, schema=schema)
    same = PostgresEventBroker(postgres_url, schema=schema)
    other = PostgresEventBroker(postgres_url, schema=f"{schema}_other")
    async with started(sender, same, other):
        sender.publish_work()
        assert await same.wait_work(timeout=20)  # delivered by now to every listener
        assert other.received == 0


async def test_the_listener_reconnects_after_its_backend_is_killed(
    postgres_url: str, schema: str
) -> None:
    """pg_terminate_backend on the listener: it notices, polls, reconnects and wakes again."""
    import psycopg

    sender = PostgresEventBroker(postgres_url, schema=schema)
    receiver = PostgresEventBroker(postgres_url, schema=schema)
    receiver.backoff = (0.2, 0.5)
    async with started(sender, receiver):
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"stepflow-listen-{receiver.origin}",),
            )
            assert [row[0] for row in await cursor.fetchall()] == [True]
        await until(receiver, lambda: receiver.disconnects == 1)
        await until(receiver, lambda: receiver.connected)
        sender.publish_work()
        assert await receiver.wait_work(timeout=20)


async def test_a_worker_on_postgres_is_woken_by_another_orchestrator(
    postgres_url: str, schema: str
) -> None:
    """With polling off, a worker runs a job created by another orchestrator at once."""
    await _woken_by_another(lambda: SQLStorage(postgres_url, schema=schema))


# -- SQLite: datagram sockets ---------------------------------------------------------


async def test_sockets_wake_every_process_on_the_file(tmp_path: Path) -> None:
    """A publish reaches every other broker in the folder, and not its sender."""
    folder = wake_folder(tmp_path / "jobs.db")
    brokers = [SocketEventBroker(folder) for _ in range(3)]
    async with started(*brokers):
        brokers[0].publish_job("job", 4)
        for other in brokers[1:]:
            assert await other.wait_job("job", 3, timeout=20)
        assert brokers[0].received == 0
    assert list(folder.iterdir()) == []  # each removed its socket when it stopped


async def test_dead_sockets_are_cleaned_up(tmp_path: Path) -> None:
    """A socket left by a process that died is removed by the next publish."""
    folder = wake_folder(tmp_path / "jobs.db")
    folder.mkdir()
    stale = folder / "12345-deadbeef0000.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    leftover.bind(str(stale))
    leftover.close()  # the file stays, as after a kill -9
    sender, receiver = SocketEventBroker(folder), SocketEventBroker(folder)
    async with started(sender, receiver):
        sender.publish_job("job", 1)
        assert await receiver.wait_job("job", 0, timeout=20)
        # The sender removes dead sockets in the same synchronous pass that reached the
        # receiver, so by the time the receiver wakes the stale file is gone.
        assert not stale.exists()


async def test_a_worker_on_sqlite_is_woken_by_another_orchestrator(tmp_path: Path) -> None:
    """With polling off, a worker on a SQLite file runs a job created elsewhere at once."""
    await _woken_by_another(lambda: SQLStorage(str(tmp_path / "shared.db")))


async def _woken_by_another(make_storage: Any) -> None:
    handlers = Handlers()
    handlers.add("work", lambda ctx: {"done": ctx.item_key})
    pipeline = Pipeline.load({"name": "p", "steps": [{"key": "a", "handler": "work"}]})
    worker = Orchestrator(
        make_storage(), handlers=handlers, pipelines=[pipeline], poll_interval=None
    )
    web = Orchestrator(make_storage(), handlers=handlers, pipelines=[pipeline], run_workers=False)
    async with worker, web:
        assert isinstance(worker.broker, RelayBroker) and isinstance(web.broker, RelayBroker)
        for broker in (worker.broker, web.broker):
            await until(broker, lambda b=broker: b.connected)
        await worker.engine.storage.next_due()  # the worker is idle and sleeping now
        job = await web.create_job("p", [{"key": "k1"}, {"key": "k2"}])
        snapshot = await web.wait(job.id, timeout=30)
    assert snapshot.job.status is JobStatus.COMPLETED
    assert worker.broker.received > 0  # type: ignore[attr-defined]


class _AnnouncedDuringWrite(MemoryStorage):
    """Runs ``during_next_write`` inside the next exchange, after its claims were read."""

    during_next_write: Callable[[], Awaitable[None]] | None = None

    async def exchange(
        self, changes: Sequence[Any], owner: str, limit: int, lease_seconds: float
    ) -> Any:
        hook, self.during_next_write = self.during_next_write, None
        result = await super().exchange(changes, owner, limit, lease_seconds)
        if hook is not None:
            await hook()
        return result


async def test_work_announced_while_the_dispatcher_writes_is_not_missed() -> None:
    """Work announced during an idle engine's write, too late for it, starts without a poll."""
    storage = _AnnouncedDuringWrite()
    registry = Handlers()
    registry.add("ok", lambda ctx: {"key": ctx.item_key})
    flow = Pipeline.load({"name": "p", "steps": [{"key": "a", "handler": "ok"}]})
    web = Orchestrator(storage, handlers=registry, pipelines=[flow], run_workers=False)
    worker = Orchestrator(
        storage, handlers=registry, pipelines=[flow], broker=LocalEventBroker(), poll_interval=None
    )
    created: list[str] = []

    async def another_process_creates_a_job() -> None:
        created.append((await web.create_job("p", [{"key": "k"}])).id)
        worker.broker.publish_work()  # the word arrives while the worker still writes
        for _ in range(5):  # and is heard before that write ends
            await anyio.lowlevel.checkpoint()

    async with web:
        storage.during_next_write = another_process_creates_a_job  # the worker's first
        async with worker:
            with anyio.fail_after(10):
                while not created:  # the worker's first write made it
                    await anyio.lowlevel.checkpoint()
                snapshot = await worker.wait(created[0])
    assert snapshot.job.status is JobStatus.COMPLETED
