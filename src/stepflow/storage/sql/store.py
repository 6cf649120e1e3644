"""The SQL storage: SQLite (embedded default) and PostgreSQL, on SQLAlchemy 2.

Design decision: a commit is one database transaction that reads the rows the change
names (locking them on PostgreSQL; SQLite writes run under ``BEGIN IMMEDIATE``), asks
:func:`stepflow._commit.plan_commit` what the change means, and writes exactly that —
visits, counters, statuses, events and the action id — so the meaning of a change is
shared with the in-memory storage and only the I/O lives here. The job row is locked
first in every write, which keeps a job's event sequence gapless and its counters exact
under any number of writers. On SQLite, "database is locked" is retried inside the
library (with a busy timeout below it and one writer at a time per process above it),
so it never reaches a caller.

The storage is async to its callers, but each transaction is a plain synchronous
function that runs whole in a worker thread (the standard library's sqlite3, psycopg
3): measured, an async driver pays a hop between threads (aiosqlite) or an event-loop
round trip for every statement, and a group commit of twenty statements then costs
more in hops than in SQL. One hop per transaction keeps the event loop free and the
per-statement cost at the driver's own.

A writer keeps the last committed state of the jobs it wrote and trusts it only while
the job's stored ``seq`` is the one it wrote (every change to a job's row or counters
moves ``seq``), so most transactions lock and read just the jobs' versions.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
)
from sqlalchemy.sql.elements import ColumnElement
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random_exponential

from ..._batch import BatchJob, CommitBatch
from ..._commit import release_change, rescue_change
from ..._errors import InvalidInput, NotFound
from ..._jsonsafe import dumps_text, loads
from ..._records import (
    ActionReads,
    ChangeSet,
    Claim,
    CommitResult,
    EventRecord,
    ItemRecord,
    JobRecord,
    StepInfo,
    VisitRecord,
    copy_job,
    copy_visit,
)
from ..._states import ItemStatus, JobStatus, StepStatus, SubStepStatus
from ...ports import Clock, JobProgress, Storage
from ._driver import DriverStatements, Read, decode_json, jsonb_parameter, ping_when_idle
from ._pragmas import prepare_sqlite
from .tables import Tables, build_tables, status_is

if TYPE_CHECKING:
    from .limits import SQLLimiter

__all__ = ["SQLStorage", "redact_url"]

T = TypeVar("T")
_ACTIVE = (JobStatus.PENDING.value, JobStatus.IN_PROGRESS.value)


def _job_active(jobs: Any) -> ColumnElement[bool]:
    """The job row's status is one whose work may be claimed (``_ACTIVE``)."""
    return or_(*(jobs.c.status == status for status in _ACTIVE))


_VISIT_FIELDS = (
    "status",
    "attempts",
    "retry_base",
    "token",
    "next_attempt_at",
    "lease_owner",
    "lease_expires_at",
    "input",
    "output",
    "error",
    "reason",
    "substeps",
    "progress",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "position",
)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _is_retryable(exc: BaseException) -> bool:
    """SQLite's "database is locked"/"busy", or a PostgreSQL deadlock or serialization
    failure: the transaction did nothing and may simply run again."""
    if not isinstance(exc, OperationalError):
        return False
    if getattr(exc.orig, "sqlstate", None) in ("40P01", "40001"):
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


#: The job columns a commit changes (the rest are fixed at creation).
_JOB_FIELDS = (
    "status",
    "seq",
    "updated_at",
    "started_at",
    "finished_at",
    "item_count",
    "step_statuses",
    "started_steps",
)
_CLOCK_READ_EVERY = 10.0  #: seconds between reads of PostgreSQL's clock
_JOB_STATES_KEPT = 10_000  #: jobs whose committed state one process keeps


def _visit_values(visit: VisitRecord) -> dict[str, Any]:
    """A visit's id and every field a commit may change, as its row stores them."""
    values = {name: getattr(visit, name) for name in _VISIT_FIELDS}
    values.update(status=visit.status.value, id=visit.id)
    return values


@dataclasses.dataclass(slots=True)
class _FirstReads:
    """What an exchange read first, in one go: due visits, job versions, named visits."""

    candidates: list[VisitRecord]
    versions: dict[str, int]
    asked: set[str]  #: the job ids whose versions were asked for (found or not)
    visits: dict[str, VisitRecord]


class SQLStorage(DriverStatements, Storage):
    """Durable storage in SQLite (a file path, or ``sqlite:///path``) or PostgreSQL
    (``postgresql://...``).

    ``prefix`` and ``schema`` place the tables; with ``create_tables`` (the default)
    :meth:`start` applies the shipped migrations, else it only checks the schema (for
    hosts that migrate as a deploy step with ``stepflow db upgrade``).
    ``clock`` replaces the database clock (tests only).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "stepflow_",
        schema: str | None = None,
        create_tables: bool = True,
        clock: Clock | None = None,
        engine: Engine | None = None,
        busy_timeout: float = 30.0,
        threads: int = 8,
    ) -> None:
        if threads < 1:
            raise InvalidInput(f"threads must be at least 1, got {threads}")
        self.url = _normalise_url(url)
        self.tables: Tables = build_tables(prefix, schema)
        self.is_sqlite = self.url.startswith("sqlite")
        self.create_tables = create_tables
        self.clock = clock
        self._busy_timeout = busy_timeout
        self._engine = engine
        self._threads = threads
        self._limiter: anyio.CapacityLimiter | None = None
        self._write_lock: anyio.Lock | None = None
        self._definition_cache: dict[str, dict[str, Any]] = {}  #: by definition hash
        self._statements: dict[str, Any] = {}  #: hot-path statements, built once
        #: (database clock - monotonic clock, when read): see ``_db_now``
        self._db_clock: tuple[float, float] = (0.0, -math.inf)
        #: The last committed state of jobs this process wrote, by id, valid while the
        #: stored ``seq`` matches (see ``_batch``).
        self._job_states: dict[str, BatchJob] = {}
        self._job_states_lock = threading.Lock()  #: transactions run in several threads
        #: How a JSON value goes to the driver: text for sqlite3, psycopg's Jsonb wrapper.
        self._json_parameter: Callable[[Any], Any] = (
            dumps_text if self.is_sqlite else jsonb_parameter()
        )
        self._json_decode: Callable[[Any], Any] = decode_json if self.is_sqlite else _as_is

    def _raw_job_row(self, row: Sequence[Any]) -> Any:
        """A raw job row (``_job_columns`` order) read like a SQLAlchemy row."""
        names = self._stmt("job-column-names", lambda: [c.name for c in self._job_columns()])
        values = dict(zip(names, row, strict=True))
        for name in ("steps", "metadata", "started_steps", "step_statuses"):
            values[name] = self._json_decode(values[name])
        return SimpleNamespace(**values)

    def __repr__(self) -> str:
        return f"SQLStorage({redact_url(self.url)!r})"

    # -- lifecycle ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (after :meth:`start`); its connections run in threads."""
        if self._engine is None:
            raise RuntimeError("SQLStorage.start() has not been called")
        return self._engine

    async def start(self) -> None:
        """Connect; migrate to this version's schema (``create_tables``) or check it.

        Refuses (``SchemaTooNew``) a database migrated by a newer stepflow.
        """
        from .migrate import check_schema_on, upgrade

        if self._engine is None:
            self._engine = self._make_engine()
        self._limiter = anyio.CapacityLimiter(self._threads)
        self._write_lock = anyio.Lock()
        if self.create_tables:
            prefix, schema = self.tables.prefix, self.tables.schema
            await anyio.to_thread.run_sync(lambda: upgrade(self.url, prefix=prefix, schema=schema))
        revision = await self._read(
            lambda conn: check_schema_on(conn, prefix=self.tables.prefix, schema=self.tables.schema)
        )
        if revision is None:
            raise InvalidInput(
                f"no stepflow tables in {redact_url(self.url)}: run `stepflow db upgrade`"
            )

    def _make_engine(self) -> Engine:
        json_codec = {"json_serializer": dumps_text, "json_deserializer": loads}
        if not self.is_sqlite:
            pg = create_engine(self.url, pool_size=self._threads, max_overflow=2, **json_codec)
            ping_when_idle(pg)
            return pg
        engine = create_engine(self.url, pool_size=self._threads, max_overflow=2, **json_codec)
        busy_timeout = self._busy_timeout

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            prepare_sqlite(dbapi_connection, busy_timeout)

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Writes take SQLite's write lock up front (no lock upgrade deadlocks);
            # reads stay deferred and read a WAL snapshot without blocking anyone.
            write = conn.get_execution_options().get("stepflow_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    async def aclose(self) -> None:
        if self._engine is not None:
            await anyio.to_thread.run_sync(self._engine.dispose)

    # -- transactions ---------------------------------------------------------------
    #
    # Every transaction is one plain function run whole in a worker thread: the
    # driver's calls (and SQLite's fsync) never block the event loop, and a
    # transaction of twenty statements costs one hop between threads, not forty.

    def _in_transaction(self, op: Callable[[Connection], T], write: bool) -> T:
        with self.engine.connect() as conn:
            if write and self.is_sqlite:
                conn.execution_options(stepflow_write=True)
            conn.info["stepflow_batches"] = []
            with conn.begin():
                result = op(conn)
            # Committed: what the transaction's batches left is now the stored state.
            self._remember(conn.info.pop("stepflow_batches"))
            return result

    async def _in_thread(self, op: Callable[[Connection], T], write: bool) -> T:
        # Never cut in half by a cancelled caller: a thread runs its transaction to the
        # end (or to its failure), and the cancellation takes effect right after it.
        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(
                self._in_transaction, op, write, limiter=self._limiter
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, op: Callable[[Connection], T]) -> T:
        """Run ``op`` in a write transaction, retrying when it was refused for a lock."""
        with anyio.CancelScope(shield=True):
            try:  # the common case, without building a retry loop
                return await self._write_once(op)
            except Exception as exc:
                if not _is_retryable(exc):
                    raise
            retrying = AsyncRetrying(
                retry=retry_if_exception(_is_retryable),
                wait=wait_random_exponential(multiplier=0.005, max=0.5),
                stop=stop_after_delay(120),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await self._write_once(op)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write_once(self, op: Callable[[Connection], T]) -> T:
        if not self.is_sqlite:
            return await self._in_thread(op, write=True)
        # One writer per process: the others wait here, not on SQLite's lock. Taken
        # without a trip through the event loop when free (the usual case: the engine's
        # dispatcher is the only writer), as ``async with`` would make.
        lock = self._write_lock
        assert lock is not None
        try:
            lock.acquire_nowait()
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            return await self._in_thread(op, write=True)
        finally:
            lock.release()

    async def _read(self, op: Callable[[Connection], T]) -> T:
        try:
            return await self._in_thread(op, write=False)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        # The connection had died (the server restarted while it was in use): the pool
        # has dropped it; a read is safe to run again, on a fresh connection.
        return await self._in_thread(op, write=False)

    def _db_now(self, conn: Connection) -> float:
        """The database clock. PostgreSQL's is read every ``_CLOCK_READ_EVERY`` seconds
        and followed by this process's monotonic clock in between: one round trip per
        transaction less, and every process still judges leases by the same clock."""
        if self.clock is not None:
            return self.clock.now()
        if self.is_sqlite:
            return time.time()
        offset, read_at = self._db_clock
        local = time.monotonic()
        if local - read_at < _CLOCK_READ_EVERY:
            return local + offset
        query = self._stmt("now", lambda: select(func.extract("epoch", func.clock_timestamp())))
        value = float(conn.execute(query).scalar())  # type: ignore[arg-type]
        after = time.monotonic()
        self._db_clock = (value - (local + after) / 2, after)  # one tuple: no torn read
        return value

    async def now(self) -> float:
        return await self._read(self._db_now)

    # -- rows -----------------------------------------------------------------------

    def _job_from_row(self, row: Any) -> JobRecord:
        return JobRecord(
            id=row.id,
            pipeline=row.pipeline,
            version=row.version,
            definition_hash=row.definition_hash,
            definition=self._definition_cache[row.definition_hash],
            steps=tuple(StepInfo(k, bool(w), int(c)) for k, w, c in row.steps),
            status=JobStatus(row.status),
            auto_process=bool(row.auto_process),
            metadata=row.metadata,
            idempotency_key=row.idempotency_key,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            seq=row.seq,
            item_count=row.item_count,
        )

    @staticmethod
    def _visit_from_row(row: Any) -> VisitRecord:
        return VisitRecord(
            id=row.id,
            job_id=row.job_id,
            item_id=row.item_id,
            step=row.step,
            status=ItemStatus(row.status),
            created_at=row.created_at,
            updated_at=row.updated_at,
            position=row.position,
            attempts=row.attempts,
            retry_base=row.retry_base,
            token=row.token,
            next_attempt_at=row.next_attempt_at,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            input=row.input,
            output=row.output,
            error=row.error,
            reason=row.reason,
            substeps=row.substeps or {},
            progress=row.progress,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    @staticmethod
    def _item_from_row(row: Any) -> ItemRecord:
        return ItemRecord(
            row.id, row.job_id, row.key, row.data, row.created_at, row.position, row.parent_id
        )

    # -- loading ----------------------------------------------------------------------

    def _job_columns(self) -> list[Any]:
        """Every job column (a job names its definition by hash; see ``_definitions_for``)."""
        return list(self.tables.jobs.c)

    def _definitions_for(self, conn: Connection, rows: Sequence[Any]) -> None:
        """Read the definitions of ``rows`` (job rows) this process has not seen yet."""
        missing = {row.definition_hash for row in rows} - self._definition_cache.keys()
        if not missing:
            return
        d = self.tables.definitions
        found = conn.execute(select(d.c.hash, d.c.definition).where(d.c.hash.in_(sorted(missing))))
        for digest, definition in found:
            self._definition_cache[digest] = definition

    def _store_definitions(self, conn: Connection, jobs: Sequence[JobRecord]) -> None:
        """Store the definitions of new ``jobs``, each once (a stored one is kept)."""
        rows = {
            job.definition_hash: {
                "hash": job.definition_hash,
                "pipeline": job.pipeline,
                "version": job.version,
                "definition": job.definition,
                "created_at": job.created_at,
            }
            for job in jobs
        }
        d = self.tables.definitions
        names = self._columns(d)
        key = self.engine.dialect.identifier_preparer.quote(d.c.hash.name)
        sql = self._stmt(
            "raw-insert-definitions",
            lambda: self._raw_insert(d, names) + f" ON CONFLICT ({key}) DO NOTHING",
        )
        self._run_raw(conn, sql, d, names, [rows[k] for k in sorted(rows)])
        for job in jobs:
            self._definition_cache.setdefault(job.definition_hash, job.definition)

    def _jobs_read(self, job_ids: Collection[str]) -> Read:
        """Job rows (without the definition), in id order."""
        j = self.tables.jobs
        return (
            "jobs",
            lambda: select(*self._job_columns()).where(self._among(j.c.id)).order_by(j.c.id),
            {"ids": self._listed(job_ids)},
        )

    def _jobs_of(self, conn: Connection, raw_rows: Sequence[Any]) -> list[Any]:
        """The rows of :meth:`_jobs_read`, read like SQLAlchemy rows, definitions cached."""
        rows = [self._raw_job_row(row) for row in raw_rows]
        self._definitions_for(conn, rows)
        return rows

    def _load_jobs(self, conn: Connection, job_ids: Collection[str]) -> list[Any]:
        if not job_ids:
            return []
        return self._jobs_of(conn, self._raw_select(conn, *self._jobs_read(job_ids)))

    def _job_versions(self, conn: Connection, job_ids: Collection[str]) -> dict[str, int]:
        """Each existing job's ``seq``, its row locked (id order) on PostgreSQL."""
        if not job_ids:
            return {}
        return dict(self._raw_select(conn, *self._versions_read(job_ids)))

    def _versions_read(self, job_ids: Collection[str]) -> Read:
        j = self.tables.jobs

        def build() -> Any:
            query = select(j.c.id, j.c.seq).where(self._among(j.c.id)).order_by(j.c.id)
            return query if self.is_sqlite else query.with_for_update()

        return "job-versions", build, {"ids": self._listed(job_ids)}

    def _cached(self, job_id: str, seq: int) -> BatchJob | None:
        with self._job_states_lock:
            kept = self._job_states.get(job_id)
        return kept if kept is not None and kept.job.seq == seq else None

    def _remember(self, batches: Sequence[CommitBatch]) -> None:
        """Keep the state of every job in ``batches``, now committed."""
        states = self._job_states
        with self._job_states_lock:
            for batch in batches:
                for job_id, state in batch.jobs.items():
                    states.pop(job_id, None)  # re-insert: the oldest entries go first
                    states[job_id] = state  # the batch is done with it: nothing changes it
            while len(states) > _JOB_STATES_KEPT:
                del states[next(iter(states))]

    def _load_job(self, conn: Connection, job_id: str) -> tuple[JobRecord, Any]:
        rows = self._load_jobs(conn, [job_id])
        if not rows:
            raise NotFound("job", job_id)
        return self._job_from_row(rows[0]), rows[0]

    def _counts_read(self, job_ids: Collection[str]) -> Read:
        c = self.tables.counts
        return (
            "counts",
            lambda: select(c.c.job_id, c.c.step, c.c.status, c.c.n).where(self._among(c.c.job_id)),
            {"ids": self._listed(job_ids)},
        )

    @staticmethod
    def _counts_of(
        rows: Sequence[Any], job_ids: Collection[str]
    ) -> dict[str, dict[str, Counter[ItemStatus]]]:
        """Each job's counters by step, from the rows of :meth:`_counts_read`."""
        counts: dict[str, dict[str, Counter[ItemStatus]]] = {k: {} for k in job_ids}
        for job_id, step, status, n in rows:
            counts[job_id].setdefault(step, Counter())[ItemStatus(status)] = n
        return counts

    def _load_counts(
        self, conn: Connection, job_ids: Collection[str]
    ) -> dict[str, dict[str, Counter[ItemStatus]]]:
        if not job_ids:
            return {}
        return self._counts_of(self._raw_select(conn, *self._counts_read(job_ids)), job_ids)

    def _load_stale(
        self, conn: Connection, job_ids: Collection[str]
    ) -> tuple[list[Any], dict[str, dict[str, Counter[ItemStatus]]]]:
        """The rows and counters of jobs (already locked) that another writer moved,
        read together: one round trip on PostgreSQL."""
        if not job_ids:
            return [], {}
        job_rows, count_rows = self._raw_selects(
            conn, [self._jobs_read(job_ids), self._counts_read(job_ids)]
        )
        return self._jobs_of(conn, job_rows), self._counts_of(count_rows, job_ids)

    def _load_visits(
        self, conn: Connection, ids: Collection[str], lock: bool = False
    ) -> dict[str, VisitRecord]:
        if not ids:
            return {}
        return self._visits_of(self._raw_select(conn, *self._visits_read(ids, lock)))

    def _visits_read(self, ids: Collection[str], lock: bool) -> Read:
        v = self.tables.visits
        lock = lock and not self.is_sqlite

        def build() -> Any:
            query = select(v).where(self._among(v.c.id)).order_by(v.c.id)
            return query.with_for_update() if lock else query

        return f"visits-lock={lock}", build, {"ids": self._listed(ids)}

    def _visits_of(self, rows: Sequence[Any]) -> dict[str, VisitRecord]:
        read = self._visit_from_raw
        return {row[0]: read(row) for row in rows}

    def _batch(
        self,
        conn: Connection,
        now: float,
        job_ids: Collection[str],
        changes: Sequence[ChangeSet] = (),
        visits: Collection[VisitRecord] = (),
        read: _FirstReads | None = None,
    ) -> CommitBatch:
        """Lock and load everything ``changes`` (and claims in ``job_ids``) may touch.

        Lock order, for every writer: job rows in id order, then visit rows in id order.
        ``read`` holds what :meth:`_first_reads` already read (and locked) of it.
        """
        t = self.tables
        batch = CommitBatch(now)
        conn.info.setdefault("stepflow_batches", []).append(batch)
        job_ids = set(job_ids) | {change.job_id for change in changes}
        # A job's ``seq`` moves with every change to its row and counters, so a job
        # whose stored seq is the one this process last committed is exactly as it
        # was left: lock and read just the versions, and load in full only the rest.
        if read is None:
            versions = self._job_versions(conn, job_ids)
        else:
            versions = {**read.versions, **self._job_versions(conn, job_ids - read.asked)}
        kept = {job_id: self._cached(job_id, seq) for job_id, seq in versions.items()}
        stale = [job_id for job_id, state in kept.items() if state is None]
        rows, counts = self._load_stale(conn, stale)
        for row in rows:
            batch.add_job(
                self._job_from_row(row),
                counts[row.id],
                {k: StepStatus(s) for k, s in row.step_statuses.items()},
                frozenset(row.started_steps),
            )
        for state in kept.values():
            if state is not None:
                batch.add_job(
                    copy_job(state.job),
                    dict(state.counts),
                    dict(state.statuses),
                    state.started,
                    shared=True,
                )
        for visit in visits:
            batch.add_visit(visit)
        named = {vc.visit_id for change in changes for vc in change.visits} - batch.stored
        if read is not None:
            for visit in read.visits.values():
                batch.add_visit(visit)
            named -= read.visits.keys()
        for visit in (self._load_visits(conn, named, lock=True)).values():
            batch.add_visit(visit)
        action_ids = {change.action_id for change in changes if change.action_id is not None}
        if action_ids:
            a = t.actions
            found = conn.execute(
                select(a.c.job_id, a.c.action_id, a.c.result).where(
                    a.c.job_id.in_(sorted({c.job_id for c in changes if c.action_id})),
                    a.c.action_id.in_(sorted(action_ids)),
                )
            )
            for job_id, action_id, result in found:
                batch.add_action(job_id, action_id, result)
        return batch

    # -- writes -----------------------------------------------------------------------

    def _jobs_by_key(self, conn: Connection, keys: Collection[str]) -> list[JobRecord]:
        """The stored jobs created with any of the idempotency ``keys``."""
        if not keys:
            return []
        jobs = self.tables.jobs
        query = self._stmt(
            "jobs-by-key",
            lambda: select(jobs.c.id).where(
                jobs.c.idempotency_key.in_(bindparam("keys", expanding=True))
            ),
        )
        ids = [row.id for row in conn.execute(query, {"keys": sorted(set(keys))})]
        return [self._job_from_row(row) for row in self._load_jobs(conn, ids)]

    async def create_job(
        self, job: JobRecord, change: ChangeSet, more: Iterable[ChangeSet] = ()
    ) -> tuple[JobRecord, bool]:
        if more == ():
            # One write path: a creation is a change like any other (see ``exchange``).
            result = await self.commit(dataclasses.replace(change, create=job))
            assert result.job is not None
            return result.job, result.created

        key = job.idempotency_key

        def op(conn: Connection) -> tuple[JobRecord, bool]:
            # A large creation, in its own transaction, written part by part.
            existing = self._jobs_by_key(conn, [key] if key else [])
            if existing:
                return existing[0], False
            batch = self._batch(conn, self._db_now(conn), ())
            batch.create(dataclasses.replace(change, create=job))
            for part in more:
                self._write_batch(conn, batch)
                batch.written()
                batch.apply(part)
            self._write_batch(conn, batch)
            return batch.job_copy(job.id), True

        try:
            return await self._write(op)
        except IntegrityError:
            if key is None:
                raise InvalidInput(f"job id {job.id!r} already exists") from None
            # Another writer created the job with this key first: return theirs.
            theirs = await self._read(lambda conn: self._jobs_by_key(conn, [key]))
            if not theirs:
                raise
            return theirs[0], False

    async def commit(self, change: ChangeSet) -> CommitResult:
        results, _ = await self.exchange([change], "", 0, 0.0)
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def exchange(
        self, changes: Sequence[ChangeSet], owner: str, limit: int, lease_seconds: float
    ) -> tuple[list[CommitResult | Exception], list[Claim]]:
        """Apply ``changes`` and claim up to ``limit`` visits in ONE transaction.

        Group commit: each change is planned against the state the earlier ones left and
        is refused alone when its guard fails; the rest, their counters, events and the
        claims are written together. If the batch hits a database constraint, each change
        is retried in its own transaction so one bad change cannot sink the others.
        """

        def op(conn: Connection) -> tuple[list[CommitResult | Exception], list[Claim]]:
            return self._exchange(conn, changes, owner, limit, lease_seconds)

        try:
            return await self._write(op)
        except (IntegrityError, DataError):
            if not changes:
                raise
        # A constraint refused the batch: find the change it was about, alone.
        results: list[CommitResult | Exception] = []
        for change in changes:
            try:
                one, _ = await self._write(
                    lambda conn, change=change: self._exchange(  # type: ignore[misc]
                        conn, [change], owner, 0, lease_seconds
                    )
                )
                results.extend(one)
            except (IntegrityError, DataError) as exc:
                refused: Exception = exc
                if change.create is not None and isinstance(exc, IntegrityError):
                    # Its key was checked in that transaction: the id itself is taken.
                    refused = InvalidInput(f"job id {change.create.id!r} already exists")
                results.append(refused)
        claims: list[Claim] = []
        if limit > 0:
            _, claims = await self._write(
                lambda conn: self._exchange(conn, [], owner, limit, lease_seconds)
            )
        return results, claims

    def _exchange(
        self,
        conn: Connection,
        changes: Sequence[ChangeSet],
        owner: str,
        limit: int,
        lease_seconds: float,
    ) -> tuple[list[CommitResult | Exception], list[Claim]]:
        now = self._db_now(conn)
        # Visits the changes make available are claimed first (depth first), so read
        # only as many waiting ones as those will not fill; any shortfall (a step not
        # started, or full) is made up by the next exchange.
        arriving = sum(1 for c in changes for v in c.new_visits if v.status is ItemStatus.AVAILABLE)
        read = self._first_reads(conn, changes, max(0, limit - arriving), now)
        candidates = read.candidates
        batch = self._batch(conn, now, {v.job_id for v in candidates}, changes, candidates, read)
        keys = [c.create.idempotency_key for c in changes if c.create is not None]
        for job in self._jobs_by_key(conn, [k for k in keys if k is not None]):
            batch.add_keyed_job(job)
        results: list[CommitResult | Exception] = list(batch.apply_each(changes))
        expires = now + lease_seconds
        claimed = batch.claim([v.id for v in candidates], owner, limit, expires)
        if len(claimed) < limit and changes:
            # The candidate read skipped steps that were full before these results
            # freed them: claim what waits there now, in this same transaction.
            behind = batch.queued_behind()
            if behind:
                waiting = self._queued(conn, behind, claimed)
                for visit in waiting:
                    batch.add_visit(visit)
                ids = [v.id for v in waiting]
                claimed += batch.claim(ids, owner, limit - len(claimed), expires)
        if not claimed:
            self._write_batch(conn, batch, last=True)
            return results, []
        # The claimed items and their outputs are read right after the writes, in the
        # same round trip on PostgreSQL, the commit with them.
        reads = self._claim_reads(claimed)
        found = self._raw_selects(conn, reads, lambda: self._write_rows(conn, batch), last=True)
        return results, self._claims(batch, claimed, *found)

    def _first_reads(
        self, conn: Connection, changes: Sequence[ChangeSet], limit: int, now: float
    ) -> _FirstReads:
        """An exchange's first reads, sent together: up to ``limit`` due visits, the
        versions of the changes' jobs and the visits the changes name, all locked."""
        job_ids = {change.job_id for change in changes}
        named = {vc.visit_id for change in changes for vc in change.visits}
        reads = self._candidate_reads(limit, now) if limit > 0 else []
        if job_ids:
            reads.append(self._versions_read(job_ids))
        if named:
            reads.append(self._visits_read(named, lock=True))
        found = list(self._raw_selects(conn, reads))
        visits = self._visits_of(found.pop()) if named else {}
        versions = dict(found.pop()) if job_ids else {}
        candidates = self._due(found, limit) if limit > 0 else []
        return _FirstReads(candidates, versions, job_ids, visits)

    def _write_batch(self, conn: Connection, batch: CommitBatch, *, last: bool = False) -> None:
        """Write a batch's final rows with one bulk statement per table, sent together
        (``last``: with the commit, on PostgreSQL)."""
        with self._pipelined(conn):
            self._write_rows(conn, batch)
            if last:
                self._commit_in_pipeline(conn)

    def _write_rows(self, conn: Connection, batch: CommitBatch) -> None:
        t = self.tables
        created_jobs = batch.new_jobs()
        if created_jobs:
            self._store_definitions(conn, [state.job for state in created_jobs])
            self._insert_many(conn, t.jobs, [self._job_row(state) for state in created_jobs])
        if batch.new_items:
            self._insert_many(
                conn,
                t.items,
                [
                    {
                        "id": i.id,
                        "job_id": i.job_id,
                        "key": i.key,
                        "data": i.data,
                        "created_at": i.created_at,
                        "position": i.position,
                        "parent_id": i.parent_id,
                    }
                    for i in batch.new_items
                ],
            )
        created, changed = batch.visit_rows()
        if created:
            rows = []
            for visit in created:
                state = batch.jobs[visit.job_id]
                values = _visit_values(visit)
                values.update(
                    job_id=visit.job_id,
                    item_id=visit.item_id,
                    step=visit.step,
                    concurrency=state.infos[visit.step].concurrency,
                    ready=state.ready(visit.step),
                )
                rows.append(values)
            self._insert_many(conn, t.visits, rows)
        if changed:
            sql = self._stmt("raw-update-visits", lambda: self._raw_update(t.visits, _VISIT_FIELDS))
            updates = [_visit_values(v) for v in sorted(changed, key=lambda vis: vis.id)]
            self._run_raw(conn, sql, t.visits, (*_VISIT_FIELDS, "id"), updates)
        for job_id, steps in batch.newly_started().items():
            conn.execute(
                update(t.visits)
                .where(t.visits.c.job_id == job_id, t.visits.c.step.in_(sorted(steps)))
                .values(ready=True)
            )
        self._add_counts(
            conn,
            t.counts,
            [
                ({"job_id": job_id, "step": step, "status": status.value}, delta)
                for (job_id, step, status), delta in batch.count_deltas.items()
                if delta
            ],
        )
        self._add_counts(
            conn,
            t.substep_counts,
            [
                ({"job_id": job_id, "step": step, "substep": key, "status": status.value}, delta)
                for (job_id, step, key, status), delta in batch.substep_deltas.items()
                if delta
            ],
        )
        if batch.events:
            self._insert_many(conn, t.events, batch.events)
        jobs = batch.changed_jobs()
        if jobs:
            sql = self._stmt("raw-update-jobs", lambda: self._raw_update(t.jobs, _JOB_FIELDS))
            rows = [self._job_row(state) for state in jobs]
            self._run_raw(conn, sql, t.jobs, (*_JOB_FIELDS, "id"), rows)
        if batch.actions:
            conn.execute(self._stmt("insert-actions", lambda: insert(t.actions)), batch.actions)

    @staticmethod
    def _job_row(state: BatchJob) -> dict[str, Any]:
        """A job's whole row (an update writes only ``_JOB_FIELDS`` of it)."""
        job = state.job
        return {
            "id": job.id,
            "pipeline": job.pipeline,
            "version": job.version,
            "definition_hash": job.definition_hash,
            "steps": [[s.key, s.runs_work, s.concurrency] for s in job.steps],
            "status": job.status.value,
            "auto_process": job.auto_process,
            "metadata": job.metadata,
            "idempotency_key": job.idempotency_key,
            "created_by": job.created_by,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "seq": job.seq,
            "item_count": job.item_count,
            "started_steps": sorted(state.started),
            "step_statuses": {k: s.value for k, s in state.statuses.items()},
        }

    def _add_counts(
        self,
        conn: Connection,
        table: Any,
        deltas: list[tuple[dict[str, str], int]],
    ) -> None:
        if not deltas:
            return
        # One statement for all counters (rows in key order, so writers lock alike).
        rows = [
            {"n": delta, **key}
            for key, delta in sorted(deltas, key=lambda kd: sorted(kd[0].items()))
        ]
        sql = self._stmt(f"raw-add-{table.name}", lambda: self._raw_add(table))
        self._run_raw(conn, sql, table, self._columns(table), rows)

    # -- claiming and leases ----------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claim]:
        if limit <= 0:
            return []
        return (await self.exchange([], owner, limit, lease_seconds))[1]

    def _candidates(self, conn: Connection, limit: int, now: float) -> list[VisitRecord]:
        """Up to ``limit`` due visits (retries first), locked, skipping locked ones.

        Only a step's ``concurrency`` minus what it has processing may be claimed; this
        query drops full steps, and the batch counts exactly under the job lock.
        """
        return self._due(self._raw_selects(conn, self._candidate_reads(limit, now)), limit)

    def _candidate_reads(self, limit: int, now: float) -> list[Read]:
        """The two candidate reads (due retries, then available visits), each for up to
        ``limit`` rows; :meth:`_due` keeps the first ``limit`` of both."""
        params = {"now": now, "limit": limit}
        return [
            ("candidates-0", lambda: self._stmt("candidates", self._candidate_queries)[0], params),
            ("candidates-1", lambda: self._stmt("candidates", self._candidate_queries)[1], params),
        ]

    def _due(self, found: Sequence[Sequence[Any]], limit: int) -> list[VisitRecord]:
        visits: dict[str, VisitRecord] = {}
        read = self._visit_from_raw
        for rows in found:
            for row in rows:
                if len(visits) >= limit:
                    return list(visits.values())
                if row[0] not in visits:
                    visits[row[0]] = read(row)
        return list(visits.values())

    def _candidate_queries(self) -> tuple[Any, Any]:
        """Due retries (by due time), then available visits (by position)."""
        t = self.tables
        v, j, c = t.visits, t.jobs, t.counts
        running = (
            select(func.coalesce(func.sum(c.c.n), 0))
            .where(
                c.c.job_id == v.c.job_id,
                c.c.step == v.c.step,
                c.c.status == ItemStatus.PROCESSING.value,
            )
            .scalar_subquery()
        )
        base = (
            select(v)
            .join(j, j.c.id == v.c.job_id)
            .where(
                v.c.ready,
                _job_active(j),
                v.c.concurrency > running,
            )
        )
        retries = base.where(
            status_is(v.c.status, ItemStatus.RETRYING), v.c.next_attempt_at <= bindparam("now")
        ).order_by(v.c.next_attempt_at)
        available = base.where(status_is(v.c.status, ItemStatus.AVAILABLE)).order_by(v.c.position)
        queries = [q.limit(bindparam("limit")) for q in (retries, available)]
        if not self.is_sqlite:
            queries = [q.with_for_update(skip_locked=True, of=v) for q in queries]
        return queries[0], queries[1]

    def _queued(
        self,
        conn: Connection,
        behind: Mapping[tuple[str, str], int],
        claimed: Sequence[VisitRecord],
    ) -> list[VisitRecord]:
        """The first visits waiting ``available`` at each ``(job, step)`` of ``behind``
        (as many as it says, past those this batch already claimed there), locked,
        skipping locked ones; sent together."""
        t = self.tables
        v = t.visits

        def build() -> Any:
            query = (
                select(v)
                .where(
                    v.c.job_id == bindparam("job_id"),
                    v.c.step == bindparam("step"),
                    v.c.status == ItemStatus.AVAILABLE.value,
                    v.c.ready,
                )
                .order_by(v.c.position)
                .limit(bindparam("limit"))
            )
            return query if self.is_sqlite else query.with_for_update(skip_locked=True)

        taken = Counter((vis.job_id, vis.step) for vis in claimed)
        reads: list[Read] = [
            ("queued", build, {"job_id": job_id, "step": step, "limit": n + taken[job_id, step]})
            for (job_id, step), n in sorted(behind.items())
        ]
        read = self._visit_from_raw
        return [read(row) for rows in self._raw_selects(conn, reads) for row in rows]

    def _claim_reads(self, claimed: Sequence[VisitRecord]) -> list[Read]:
        """The reads that complete claims: the items, and their outputs so far."""
        t = self.tables
        item_ids = {vis.item_id for vis in claimed}
        items_read: Read = (
            "items",
            lambda: select(t.items).where(self._among(t.items.c.id)),
            {"ids": self._listed(item_ids)},
        )
        return [items_read, self._outputs_read(item_ids)]

    def _claims(
        self,
        batch: CommitBatch,
        claimed: Sequence[VisitRecord],
        item_rows: Sequence[Any],
        output_rows: Sequence[Any],
    ) -> list[Claim]:
        decode = self._json_decode
        items = {
            id_: ItemRecord(id_, job_id, key, decode(data), created_at, position, parent_id)
            for id_, job_id, key, data, created_at, position, parent_id in item_rows
        }
        outputs = self._outputs_of(output_rows, items)
        jobs = {job_id: batch.job_copy(job_id) for job_id in {vis.job_id for vis in claimed}}
        return [
            Claim(
                jobs[vis.job_id],
                items[vis.item_id],
                copy_visit(vis),
                outputs.get(vis.item_id, {}),
            )
            for vis in claimed
        ]

    def _outputs(self, conn: Connection, item_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        if not item_ids:
            return {}
        return self._outputs_of(self._raw_select(conn, *self._outputs_read(item_ids)), item_ids)

    def _outputs_read(self, item_ids: Collection[str]) -> Read:
        v = self.tables.visits
        return (
            "outputs",
            lambda: select(v.c.item_id, v.c.step, v.c.output).where(
                self._among(v.c.item_id), v.c.output.is_not(None)
            ),
            {"ids": self._listed(item_ids)},
        )

    def _outputs_of(
        self, rows: Sequence[Any], item_ids: Collection[str]
    ) -> dict[str, dict[str, Any]]:
        """Each item's outputs by step, from the rows of :meth:`_outputs_read`."""
        found: dict[str, dict[str, Any]] = {i: {} for i in item_ids}
        decode = self._json_decode
        for item_id, step, output in rows:
            if output is not None:
                found[item_id][step] = decode(output)
        return found

    async def renew(
        self, owner: str, held: Sequence[tuple[str, int]], lease_seconds: float
    ) -> set[tuple[str, int]]:
        v = self.tables.visits

        def op(conn: Connection) -> set[tuple[str, int]]:
            now = self._db_now(conn)
            expires = now + lease_seconds
            kept: set[tuple[str, int]] = set()
            for visit_id, token in sorted(held):  # rows in id order, like every writer
                result = conn.execute(
                    update(v)
                    .where(
                        v.c.id == visit_id,
                        v.c.token == token,
                        v.c.lease_owner == owner,
                        v.c.status == ItemStatus.PROCESSING.value,
                        v.c.lease_expires_at >= now,
                    )
                    .values(lease_expires_at=expires)
                )
                if result.rowcount:
                    kept.add((visit_id, token))
            return kept

        return await self._write(op)

    async def release(self, owner: str, held: Sequence[tuple[str, int]]) -> int:
        if not held:
            return 0

        def op(conn: Connection) -> int:
            # Read without locks to learn the jobs, then lock jobs before visits.
            seen = self._load_visits(conn, [visit_id for visit_id, _ in held])
            now = self._db_now(conn)
            batch = self._batch(conn, now, {vis.job_id for vis in seen.values()})
            for locked in (self._load_visits(conn, seen, lock=True)).values():
                batch.add_visit(locked)
            tokens = dict(held)
            released = 0
            for visit_id in sorted(seen):
                found = batch.visits.get(visit_id)
                if (
                    found is not None
                    and found.status is ItemStatus.PROCESSING
                    and found.lease_owner == owner
                    and found.token == tokens[found.id]
                ):
                    batch.apply(
                        ChangeSet(found.job_id, actor=owner, visits=[release_change(found)])
                    )
                    released += 1
            self._write_batch(conn, batch)
            return released

        return await self._write(op)

    async def rescue_expired(
        self, retry_delay: Callable[[JobRecord, VisitRecord], float | None]
    ) -> int:
        v = self.tables.visits

        def op(conn: Connection) -> int:
            now = self._db_now(conn)
            query = (
                select(v.c.id, v.c.job_id)
                .where(status_is(v.c.status, ItemStatus.PROCESSING), v.c.lease_expires_at < now)
                .limit(500)
            )
            expired = list(conn.execute(query))
            if not expired:
                return 0
            batch = self._batch(conn, now, {row.job_id for row in expired})
            for locked in (self._load_visits(conn, [r.id for r in expired], lock=True)).values():
                batch.add_visit(locked)
            rescued = 0
            for row in expired:
                visit = batch.visits.get(row.id)
                if (
                    visit is None
                    or visit.status is not ItemStatus.PROCESSING
                    or visit.lease_expires_at is None
                    or visit.lease_expires_at >= now
                ):
                    continue  # another rescuer or the holder got there first
                delay = retry_delay(batch.jobs[visit.job_id].job, visit)
                change = ChangeSet(
                    visit.job_id, actor="rescuer", visits=[rescue_change(visit, delay, now)]
                )
                batch.apply(change)
                rescued += 1
            self._write_batch(conn, batch)
            return rescued

        return await self._write(op)

    async def next_due(self) -> float | None:
        v, j = self.tables.visits, self.tables.jobs
        # Asked by an idle dispatcher after every write that claimed nothing: built and
        # compiled once, run on the driver.
        read: Read = (
            "next-due",
            lambda: (
                select(func.min(v.c.next_attempt_at))
                .join(j, j.c.id == v.c.job_id)
                .where(
                    status_is(v.c.status, ItemStatus.RETRYING),
                    _job_active(j),
                )
            ),
            {},
        )

        def op(conn: Connection) -> float | None:
            ((value,),) = self._raw_selects(conn, [read])[0]
            return None if value is None else float(value)

        return await self._read(op)

    # -- reads ------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord:
        def op(conn: Connection) -> JobRecord:
            return (self._load_job(conn, job_id))[0]

        return await self._read(op)

    async def step_statuses(self, job_id: str) -> tuple[JobRecord, dict[str, StepStatus]]:
        def op(conn: Connection) -> tuple[JobRecord, dict[str, StepStatus]]:
            job, row = self._load_job(conn, job_id)
            return job, {k: StepStatus(v) for k, v in row.step_statuses.items()}

        return await self._read(op)

    async def progress(self, job_id: str) -> JobProgress:
        def op(conn: Connection) -> JobProgress:
            # The row, the counters and the sub-step counters: one round trip.
            job_rows, count_rows, substep_rows = self._raw_selects(
                conn,
                [
                    self._jobs_read([job_id]),
                    self._counts_read([job_id]),
                    self._substep_counts_read([job_id]),
                ],
            )
            rows = self._jobs_of(conn, job_rows)
            if not rows:
                raise NotFound("job", job_id)
            row = rows[0]
            counts = self._counts_of(count_rows, [job_id])[job_id]
            subs: dict[str, dict[str, dict[SubStepStatus, int]]] = {}
            for step, key, status, n in substep_rows:
                subs.setdefault(step, {}).setdefault(key, {})[SubStepStatus(status)] = n
            return JobProgress(
                self._job_from_row(row),
                {k: dict(c) for k, c in counts.items()},
                subs,
                {k: StepStatus(v) for k, v in row.step_statuses.items()},
                frozenset(row.started_steps),
            )

        return await self._read(op)

    def _substep_counts_read(self, job_ids: Collection[str]) -> Read:
        s = self.tables.substep_counts
        return (
            "substep-counts",
            lambda: select(s.c.step, s.c.substep, s.c.status, s.c.n).where(self._among(s.c.job_id)),
            {"ids": self._listed(job_ids)},
        )

    def _action(self, conn: Connection, job_id: str, action_id: str) -> dict[str, Any] | None:
        a = self.tables.actions
        query = self._stmt(
            "action",
            lambda: select(a.c.result).where(
                a.c.job_id == bindparam("job"), a.c.action_id == bindparam("action")
            ),
        )
        row = conn.execute(query, {"job": job_id, "action": action_id}).first()
        return None if row is None else (row.result or {})

    async def get_action(self, job_id: str, action_id: str) -> dict[str, Any] | None:
        return await self._read(lambda conn: self._action(conn, job_id, action_id))

    def _items(self, conn: Connection, job_id: str, item_ids: Collection[str]) -> dict[str, Any]:
        i = self.tables.items
        query = self._stmt(
            "job-items",
            lambda: select(i).where(
                i.c.job_id == bindparam("job"), i.c.id.in_(bindparam("ids", expanding=True))
            ),
        )
        rows = conn.execute(query, {"job": job_id, "ids": sorted(item_ids)})
        return {r.id: self._item_from_row(r) for r in rows}

    def _visits_at(
        self, conn: Connection, job_id: str, step: str, item_ids: Collection[str]
    ) -> dict[str, VisitRecord]:
        v = self.tables.visits
        query = self._stmt(
            "visits-at-step",
            lambda: select(v).where(
                v.c.job_id == bindparam("job"),
                v.c.step == bindparam("step"),
                v.c.item_id.in_(bindparam("ids", expanding=True)),
            ),
        )
        rows = conn.execute(query, {"job": job_id, "step": step, "ids": sorted(item_ids)})
        return {r.item_id: self._visit_from_row(r) for r in rows}

    async def get_items(self, job_id: str, item_ids: Collection[str]) -> dict[str, ItemRecord]:
        return await self._read(lambda conn: self._items(conn, job_id, item_ids))

    async def get_visits(
        self, job_id: str, step: str, item_ids: Collection[str]
    ) -> dict[str, VisitRecord]:
        return await self._read(lambda conn: self._visits_at(conn, job_id, step, item_ids))

    async def action_reads(
        self,
        job_id: str,
        action_id: str | None,
        step: str | None,
        item_ids: Collection[str],
    ) -> ActionReads:
        t = self.tables
        j, a, i, v = t.jobs, t.actions, t.items, t.visits
        job_read: Read = (
            "job",
            lambda: select(*self._job_columns()).where(j.c.id == bindparam("job")),
            {"job": job_id},
        )
        action_read: Read = (
            "action",
            lambda: select(a.c.result).where(
                a.c.job_id == bindparam("job"), a.c.action_id == bindparam("action")
            ),
            {"job": job_id, "action": action_id},
        )
        listed = self._listed(item_ids)
        visits_read: Read = (
            "visits-at-step",
            lambda: select(v).where(
                v.c.job_id == bindparam("job"),
                v.c.step == bindparam("step"),
                self._among(v.c.item_id),
            ),
            {"job": job_id, "step": step, "ids": listed},
        )
        items_read: Read = (
            "job-items",
            lambda: select(i).where(i.c.job_id == bindparam("job"), self._among(i.c.id)),
            {"job": job_id, "ids": listed},
        )

        def op(conn: Connection) -> ActionReads:
            # Everything at once (one round trip on PostgreSQL): the items and outputs
            # are asked for by the ids named, and kept for the visits found.
            wanted = [job_read]
            if action_id is not None:
                wanted.append(action_read)
            named = step is not None and bool(item_ids)
            if named:
                wanted += [visits_read, items_read, self._outputs_read(item_ids)]
            found = list(self._raw_selects(conn, wanted))
            rows = [self._raw_job_row(row) for row in found.pop(0)]
            if not rows:
                raise NotFound("job", job_id)
            self._definitions_for(conn, rows)
            reads = ActionReads(self._job_from_row(rows[0]))
            if action_id is not None:
                previous = found.pop(0)
                reads.previous = None if not previous else (self._json_decode(previous[0][0]) or {})
            if named:
                assert step is not None
                visit_rows, item_rows, output_rows = found
                visits = {r.item_id: r for r in map(self._visit_from_raw, visit_rows)}
                decode = self._json_decode
                reads.step, reads.item_ids = step, frozenset(item_ids)
                reads.visits = visits
                reads.items = {
                    id_: ItemRecord(id_, job, key, decode(data), created, position, parent)
                    for id_, job, key, data, created, position, parent in item_rows
                    if id_ in visits
                }
                outputs = self._outputs_of(output_rows, item_ids)
                reads.outputs = {k: o for k, o in outputs.items() if k in visits}
            return reads

        return await self._read(op)

    async def find_visits(
        self, job_id: str, step: str, statuses: Collection[ItemStatus], limit: int
    ) -> list[VisitRecord]:
        v = self.tables.visits

        def op(conn: Connection) -> list[VisitRecord]:
            rows = conn.execute(
                select(v)
                .where(
                    v.c.job_id == job_id,
                    v.c.step == step,
                    v.c.status.in_([s.value for s in statuses]),
                )
                .order_by(v.c.position)
                .limit(limit)
            )
            return [self._visit_from_row(r) for r in rows]

        return await self._read(op)

    async def list_visits(
        self,
        job_id: str,
        step: str,
        statuses: Collection[ItemStatus] | None,
        after: int,
        limit: int,
    ) -> list[tuple[ItemRecord, VisitRecord]]:
        v, i = self.tables.visits, self.tables.items

        def op(conn: Connection) -> list[tuple[ItemRecord, VisitRecord]]:
            query = select(v).where(v.c.job_id == job_id, v.c.step == step, v.c.position > after)
            if statuses is not None:
                query = query.where(v.c.status.in_([s.value for s in statuses]))
            visits = [
                self._visit_from_row(r)
                for r in conn.execute(query.order_by(v.c.position).limit(limit))
            ]
            items = {
                r.id: self._item_from_row(r)
                for r in conn.execute(select(i).where(i.c.id.in_([vis.item_id for vis in visits])))
            }
            return [(items[vis.item_id], vis) for vis in visits]

        return await self._read(op)

    async def item_outputs(
        self, job_id: str, item_ids: Collection[str]
    ) -> dict[str, dict[str, Any]]:
        return await self._read(lambda conn: self._outputs(conn, item_ids))

    async def read_events(self, job_id: str, after: int, limit: int) -> list[EventRecord]:
        e = self.tables.events

        def op(conn: Connection) -> list[EventRecord]:
            rows = conn.execute(
                select(e)
                .where(e.c.job_id == job_id, e.c.seq > after)
                .order_by(e.c.seq)
                .limit(limit)
            )
            found = [
                EventRecord(r.job_id, r.seq, r.type, r.at, r.actor, r.step, r.item_id, r.data)
                for r in rows
            ]
            if not found:  # only an empty answer needs to tell "no such job" apart
                self._load_job(conn, job_id)
            return found

        return await self._read(op)

    def limiter(self, clock: Clock | None = None, **options: Any) -> SQLLimiter:
        """A :class:`~stepflow.storage.sql.limits.SQLLimiter`: rate limits and
        concurrency caps held in this database, for every process sharing it (an
        orchestrator on this storage uses it by default)."""
        from ..._clock import SystemClock
        from .limits import SQLLimiter

        return SQLLimiter(self, clock or self.clock or SystemClock(), **options)


def _as_is(value: Any) -> Any:
    return value


def _normalise_url(url: str) -> str:
    """Accept a plain file path or a SQLite/PostgreSQL URL; pick the drivers stepflow runs
    (the standard library's sqlite3, psycopg 3), whatever driver the URL named."""
    from .migrate import sync_url

    return sync_url(url)
