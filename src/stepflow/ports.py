"""The ports: what the orchestrator needs from storage, executor, broker, clock and limiter.

Design decision: these five abstract classes are the whole seam between stepflow's
core and the world. The orchestrator holds no state a crash could lose: it reads and
writes through :class:`Storage`; it runs host code through :class:`Executor`; it learns
that something changed through :class:`EventBroker`; it asks :class:`Clock` the time;
it asks :class:`Limiter` for a :class:`Permit` before a rate-limited or capped call.
Each method's docstring is its contract; ``stepflow.testing`` has the in-memory
implementations and (for storages) a contract suite any implementation must pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Self

import anyio

from ._definitions import RateLimit
from ._errors import StepflowError
from ._records import (
    ActionReads,
    ChangeSet,
    Claim,
    CommitResult,
    EventRecord,
    ItemRecord,
    JobRecord,
    VisitRecord,
)
from ._states import ItemStatus, StepStatus, SubStepStatus

__all__ = [
    "ActionReads",
    "ChangeSet",
    "Claim",
    "Clock",
    "CommitResult",
    "EventBroker",
    "EventRecord",
    "Executor",
    "ItemRecord",
    "JobProgress",
    "JobRecord",
    "Limiter",
    "Permit",
    "Storage",
    "VisitRecord",
]


class JobProgress:
    """A job with its counters: everything a snapshot needs, read in one go."""

    __slots__ = ("counts", "job", "started", "step_statuses", "substep_counts")

    def __init__(
        self,
        job: JobRecord,
        counts: Mapping[str, Mapping[ItemStatus, int]],
        substep_counts: Mapping[str, Mapping[str, Mapping[SubStepStatus, int]]],
        step_statuses: Mapping[str, StepStatus],
        started: frozenset[str],
    ) -> None:
        self.job = job
        self.counts = counts
        self.substep_counts = substep_counts
        self.step_statuses = step_statuses
        self.started = started


class Storage(ABC):
    """Durable state: jobs, items, visits, counters, events, leases and action ids.

    Contract, for every implementation:

    * :meth:`commit` and :meth:`create_job` are atomic: the change, the counters it
      moves, the statuses it re-derives and its events are all written, or nothing is.
      They compute what to write with :func:`stepflow._commit.plan_commit`.
    * Event sequence numbers are per job, start at 1, and are gapless and increasing.
    * A visit is claimed by at most one owner at a time; each claim bumps its fencing
      token, and a change guarded by an older token is refused with ``LeaseLost``.
    * Lease expiry is judged by the storage's own clock (the database clock for SQL).
    * Reads never return a half-applied change.
    * An action id is applied at most once per job; its result is kept.
    """

    async def start(self) -> None:
        """Open connections, create or check tables. Called once before any other use."""

    async def aclose(self) -> None:
        """Release connections. The storage is not used afterwards."""

    def limiter(self, clock: Clock) -> Limiter | None:
        """A limiter whose limits hold for every user of this storage (for SQL: every
        process on the database), or ``None`` (the default) for in-process limits."""
        return None

    @abstractmethod
    async def create_job(
        self, job: JobRecord, change: ChangeSet, more: Iterable[ChangeSet] = ()
    ) -> tuple[JobRecord, bool]:
        """Insert ``job`` and apply ``change`` (its items and first visits) atomically.

        ``more`` holds further parts of the same creation (more items and their first
        visits, the last one may set the job's status), applied after ``change`` in the
        same transaction: a storage may write each part before it takes the next, so a
        job of 100,000 items is never in memory whole. ``more`` may be iterated again
        when a storage retries its transaction.

        If a job with the same non-null ``idempotency_key`` exists, write nothing and
        return ``(existing_job, False)``; else return ``(job, True)``.
        """

    @abstractmethod
    async def get_job(self, job_id: str) -> JobRecord:
        """The job, or raise ``NotFound``."""

    @abstractmethod
    async def progress(self, job_id: str) -> JobProgress:
        """The job with its per-step counters, sub-step counters and step statuses.

        Its cost must not grow with the number of items.
        """

    async def step_statuses(self, job_id: str) -> tuple[JobRecord, dict[str, StepStatus]]:
        """The job and its steps' statuses, without counters: what a waiter polls.

        The default reads :meth:`progress`; a storage that keeps step statuses on the
        job's own row reads just that row.
        """
        progress = await self.progress(job_id)
        return progress.job, dict(progress.step_statuses)

    @abstractmethod
    async def get_items(self, job_id: str, item_ids: Collection[str]) -> dict[str, ItemRecord]:
        """The named items of the job that exist (unknown ids are left out)."""

    @abstractmethod
    async def get_visits(
        self, job_id: str, step: str, item_ids: Collection[str]
    ) -> dict[str, VisitRecord]:
        """The visits of the named items at ``step``, by item id (absent ones left out)."""

    async def action_reads(
        self,
        job_id: str,
        action_id: str | None,
        step: str | None,
        item_ids: Collection[str],
    ) -> ActionReads:
        """Everything a person's action reads before it plans, at once: the job (or
        ``NotFound``), ``action_id``'s stored result (as :meth:`get_action`), and, when
        ``step`` is given, the named items' visits there (as :meth:`get_visits`), the
        items and their outputs so far (as :meth:`item_outputs`). A storage that can
        reads it all in one transaction; this default makes the separate calls."""
        reads = ActionReads(await self.get_job(job_id))
        if action_id is not None:
            reads.previous = await self.get_action(job_id, action_id)
        if step is not None and item_ids:
            reads.step, reads.item_ids = step, frozenset(item_ids)
            reads.visits = await self.get_visits(job_id, step, item_ids)
            found = list(reads.visits)
            reads.items = await self.get_items(job_id, found)
            reads.outputs = await self.item_outputs(job_id, found)
        return reads

    @abstractmethod
    async def find_visits(
        self, job_id: str, step: str, statuses: Collection[ItemStatus], limit: int
    ) -> list[VisitRecord]:
        """Up to ``limit`` visits at ``step`` in one of ``statuses``, in item order."""

    @abstractmethod
    async def list_visits(
        self,
        job_id: str,
        step: str,
        statuses: Collection[ItemStatus] | None,
        after: int,
        limit: int,
    ) -> list[tuple[ItemRecord, VisitRecord]]:
        """A page of visits at ``step`` whose item position is greater than ``after``."""

    @abstractmethod
    async def item_outputs(
        self, job_id: str, item_ids: Collection[str]
    ) -> dict[str, dict[str, Any]]:
        """For each item, the outputs of its visits that have one, by step key."""

    @abstractmethod
    async def commit(self, change: ChangeSet) -> CommitResult:
        """Apply ``change`` atomically (see the class contract).

        Raises ``StaleWrite``/``LeaseLost`` when a guard fails, ``InvalidTransition``
        for a change outside the tables, ``Conflict`` when the job's status does not
        fit, ``DuplicateAction`` when ``change.action_id`` was applied before — in every
        case having written nothing.
        """

    async def exchange(
        self, changes: Sequence[ChangeSet], owner: str, limit: int, lease_seconds: float
    ) -> tuple[list[CommitResult | Exception], list[Claim]]:
        """Apply ``changes``, each on its own terms, then claim up to ``limit`` visits.

        The engine's one write path: the results of work that finished together, and
        the claims for the workers they freed. Each change is checked and applied as
        :meth:`commit` would; one refused with a :class:`~stepflow.StepflowError` is
        returned in its place (the others still apply). Results are returned only once
        everything they describe is durable. A storage that can, does it all in one
        transaction (group commit: the SQL storage); this default commits each change
        and then claims, which is correct for any storage. An infrastructure error
        (the database went away) is raised: then nothing is known to be written, and
        the caller may offer the same changes again — their guards make that safe.

        The shipped storages claim what the changes made available (an item moving on
        to its next step) before visits that were already waiting, so work under way
        finishes first (the SQL storage takes due retries before both); any order that
        keeps the claiming rules is correct.

        A change with ``create`` set creates that job as :meth:`create_job` would (an
        existing idempotency key answers with the existing job and ``created=False``);
        its result carries the stored job. So a job's creation shares the transaction
        with the results and claims around it, and the new job's first work can be
        claimed in the very transaction that creates it.
        """
        results: list[CommitResult | Exception] = []
        for change in changes:
            try:
                if change.create is None:
                    results.append(await self.commit(change))
                    continue
                job, created = await self.create_job(change.create, change)
                results.append(
                    CommitResult(job.id, job.seq, job.status, {}, job=job, created=created)
                )
            except StepflowError as exc:
                results.append(exc)
        claims = await self.claim(owner, limit, lease_seconds) if limit > 0 else []
        return results, claims

    @abstractmethod
    async def get_action(self, job_id: str, action_id: str) -> dict[str, Any] | None:
        """The stored result of an applied action id, or ``None``."""

    @abstractmethod
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claim]:
        """Claim up to ``limit`` visits that are due, moving each to ``processing``.

        Due: ``available`` at a step that runs work and is started (``auto_process``
        or started by hand), or ``retrying`` with ``next_attempt_at`` reached; in a job
        that is ``pending`` or ``in_progress``; without exceeding the step's
        ``concurrency`` of visits ``processing`` in that job. Each claim increments
        ``attempts`` and ``token``, sets the lease, and commits like :meth:`commit`.
        """

    @abstractmethod
    async def renew(
        self, owner: str, held: Sequence[tuple[str, int]], lease_seconds: float
    ) -> set[tuple[str, int]]:
        """Extend the leases of ``(visit_id, token)`` pairs still held by ``owner``.

        A lease that has already expired is lost, even before it is rescued.

        Returns the pairs whose lease was extended; any other was lost.
        """

    @abstractmethod
    async def release(self, owner: str, held: Sequence[tuple[str, int]]) -> int:
        """Hand back ``(visit_id, token)`` pairs ``owner`` still holds, unfinished.

        Each goes back to ``available`` (its attempt stays counted) with reason
        ``released at shutdown``, so another worker can take it at once. Returns how
        many were released.
        """

    @abstractmethod
    async def rescue_expired(
        self, retry_delay: Callable[[JobRecord, VisitRecord], float | None]
    ) -> int:
        """Take back every ``processing`` visit whose lease has expired.

        ``retry_delay(job, visit)`` says when it may run again (seconds from now, or ``None``
        when its retry policy is spent, in which case it fails). Each rescue is a
        guarded change with reason ``lease expired``. Returns how many were rescued.
        """

    @abstractmethod
    async def next_due(self) -> float | None:
        """The earliest ``next_attempt_at`` of a ``retrying`` visit, or ``None``."""

    @abstractmethod
    async def read_events(self, job_id: str, after: int, limit: int) -> list[EventRecord]:
        """Up to ``limit`` events of the job with ``seq > after``, in order."""

    @abstractmethod
    async def now(self) -> float:
        """The storage's clock, in Unix seconds (the database clock for SQL)."""


class Executor(ABC):
    """Where a handler call runs.

    Contract: :meth:`run` calls ``func(argument)`` and returns its result or raises its
    exception. An ``async`` function is awaited; a plain one must not block the event
    loop. If the calling task is cancelled, :meth:`run` returns promptly (a thread may
    be abandoned; the handler's context says it was cancelled).
    """

    @abstractmethod
    async def run(self, func: Callable[[Any], Any], argument: Any, *, is_async: bool) -> Any:
        """Run one handler call."""


class EventBroker(ABC):
    """Tells waiting readers that a job changed, and idle workers that work arrived.

    Contract: notifications carry ids only and may be lost or merged; a reader always
    re-reads the storage, so the broker only shortens waits. :meth:`wait_job` and
    :meth:`wait_work` return ``True`` when notified and ``False`` after ``timeout``.
    :meth:`start` and :meth:`aclose` bracket its use inside the event loop (a broker
    that reaches other processes opens and closes its link there).
    """

    #: How often an engine on a database other processes share looks at the storage
    #: anyway (seconds): a broker that cannot hear them leaves the default, one that
    #: can looks rarely (only a lost notification waits that long).
    fallback_poll: float = 1.0

    async def start(self) -> None:
        """Prepare (connections, background tasks); called once before any wait."""

    async def aclose(self) -> None:
        """Stop; the broker is not used afterwards."""

    def wake_here(self) -> None:
        """Wake this process's idle workers only (a fake clock's jump concerns no one
        else); by default the same as :meth:`publish_work`."""
        self.publish_work()

    @abstractmethod
    def publish_job(self, job_id: str, seq: int) -> None:
        """Say that ``job_id`` has events up to ``seq``."""

    @abstractmethod
    async def wait_job(self, job_id: str, after: int, timeout: float | None) -> bool:
        """Wait until an event after ``after`` is published for ``job_id``."""

    @abstractmethod
    def publish_work(self) -> None:
        """Say that work may be claimable now."""

    @abstractmethod
    async def wait_work(self, timeout: float | None) -> bool:
        """Wait until :meth:`publish_work` is called (or ``timeout`` passes).

        A running engine calls it in a loop from one long-lived task, with its
        ``poll_interval`` as ``timeout``, and wakes its dispatcher after each return: a
        publish made while nobody waited must end the next wait at once, and a wait
        must not return at once again and again.
        """


class Clock(ABC):
    """Time for retry waits and rate limits; replaceable by a fake clock in tests."""

    @abstractmethod
    def now(self) -> float:
        """Unix seconds."""

    @abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time."""

    def timeout_seconds(self, deadline: float) -> float | None:
        """Real seconds to wait for ``deadline`` of this clock, for timed waits.

        ``None`` means "wait until woken": a fake clock wakes waiters when it moves.
        """
        return max(0.0, deadline - self.now())

    def on_advance(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever time jumps (a fake clock); real clocks ignore it."""


class Permit:
    """One call's right to run under a :class:`~stepflow.RateLimit`, until released.

    ``turn`` is when the call was allowed to start (the limiter's clock: the database
    clock for SQL); ``waited`` is how long :meth:`Limiter.acquire` waited (seconds).
    :meth:`release` gives back a concurrency slot (nothing else to give back for a rate);
    calling it again does nothing. ``async with permit:`` releases on the way out.
    """

    __slots__ = ("_release", "key", "turn", "waited")

    def __init__(
        self,
        key: str,
        turn: float,
        waited: float,
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.key = key
        self.turn = turn
        self.waited = waited
        self._release = release

    @property
    def released(self) -> bool:
        return self._release is None

    async def release(self) -> None:
        """Give the slot back (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            await release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.release()


class Limiter(ABC):
    """Rate limits and concurrency caps on handler calls, per key.

    Contract, for every implementation:

    * :meth:`acquire` judges ``limit`` under the key ``limit.key or default_key``; every
      user of the limiter's scope (one process in memory, every process sharing the
      database for SQL) shares a key.
    * Rate (``calls`` per ``per_seconds``): in any window of ``per_seconds``, at most
      ``calls`` acquires of a key return, counted from the moment each one is allowed to
      start. A caller whose turn is later sleeps until then; it never busy-polls.
    * Concurrency (``concurrency``): at most that many permits of a key are unreleased at
      once. The slot is taken before the rate is judged, so a call waiting for a slot
      does not use up a rate turn. A holder that vanishes without releasing (a crashed
      process) gives its slot back once its lease, renewed while it lives, expires.
    * A cancelled :meth:`acquire` holds nothing afterwards.
    * Time is the limiter's clock (the database clock for SQL), so a fake clock can
      step a "one call per 60 s" limit in a test.
    """

    async def start(self) -> None:
        """Prepare (connections, background renewal). Called once before any acquire."""

    async def aclose(self) -> None:
        """Give back every permit still held; the limiter is not used afterwards."""

    @abstractmethod
    async def acquire(self, limit: RateLimit, default_key: str) -> Permit:
        """Wait until a call under ``limit`` may start; return its :class:`Permit`."""
