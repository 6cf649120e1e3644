"""The orchestrator: the async API a host calls, and the engine it runs.

Design decision: every verb that changes state follows one path (:meth:`_act`): find
the job, authorise, return the stored result if the action id was seen, plan a
:class:`ChangeSet` from fresh reads, and commit it in one guarded write — retrying the
plan if a worker changed a row in between. A verb therefore either applies whole, with
an ``action`` event carrying its actor, or raises and writes nothing. The orchestrator
keeps no state of its own beyond caches of parsed definitions.
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack
from typing import Any, Literal, Self

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._actions import READ_AHEAD, ActionPlanner
from ._clock import SystemClock
from ._definitions import Pipeline
from ._engine import Engine
from ._errors import Conflict, DuplicateAction, InvalidInput, NotFound, PermissionDenied, StaleWrite
from ._handlers import ErrorClassifier, Handlers
from ._ids import new_id
from ._jsonsafe import check_json
from ._models import ActionRequest, ActionResult, Actor, Event, Item, ItemPage, Job, Snapshot
from ._planning import arrive, new_item
from ._ratelimit import CallPermits, RateLimiter, ReleasingExecutor
from ._records import ChangeSet, EventDraft, JobRecord, StepInfo
from ._snapshot import build_snapshot, job_view
from ._states import JOB_TERMINAL, ItemStatus, JobStatus, is_settled
from .brokers import default_broker
from .executors.inprocess import InProcessExecutor
from .ports import Clock, EventBroker, Executor, JobProgress, Limiter, Storage
from .storage.memory import MemoryStorage

__all__ = ["ItemInput", "Orchestrator"]

Authorize = Callable[[ActionRequest], bool | Awaitable[bool]]
ActorLike = Actor | str
_PLAN_RETRIES = 8


class ItemInput(BaseModel):
    """An item to put in a job: the host's key (unique in the job) and its data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=256)
    data: dict[str, Any] = {}

    @field_validator("key")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("item key must be printable (no control characters)")
        return value


def _actor(actor: ActorLike) -> Actor:
    if isinstance(actor, Actor):
        return actor
    try:
        return Actor(id=actor)
    except ValidationError as exc:
        raise InvalidInput(f"actor: {exc.errors()[0]['msg']}") from None


_CREATION_PART = 5_000  #: items per part of a large job's creation


class _Parts:
    """The parts of a large creation after the first, each built when it is taken
    (iterable again, for a storage that retries its transaction); the last one starts
    the job."""

    def __init__(
        self,
        job_id: str,
        actor: str,
        count: int,
        add_items: Callable[[ChangeSet, int], None],
        start: bool,
    ) -> None:
        self._job_id, self._actor, self._count = job_id, actor, count
        self._add_items, self._start = add_items, start

    def __iter__(self) -> Iterator[ChangeSet]:
        for first in range(_CREATION_PART, self._count, _CREATION_PART):
            part = ChangeSet(self._job_id, actor=self._actor)
            self._add_items(part, first)
            if self._start and first + _CREATION_PART >= self._count:
                part.job_status = JobStatus.PENDING
            yield part


class Orchestrator:
    """Runs step pipelines durably; use as ``async with Orchestrator(...) as orch``.

    ``storage`` defaults to a fresh :class:`~stepflow.testing.MemoryStorage`.
    ``handlers`` binds the keys the pipelines name. ``authorize`` is asked before every
    action (``False`` raises :class:`PermissionDenied`); without it every action is
    allowed. ``run_workers=False`` makes an orchestrator that only reads and acts
    (for a web process when workers run elsewhere); its one writer still lets jobs
    created and actions taken at the same time share transactions.

    ``broker`` defaults to one that reaches every process on the storage's database
    (PostgreSQL LISTEN/NOTIFY, Unix datagrams beside a SQLite file); ``limiter`` to the
    storage's own (rate limits and concurrency caps held in the SQL database), else an
    in-process one. ``poll_interval="auto"`` looks at the storage every 2 s with such a
    broker (only a lost notification waits that long), every second without one.
    """

    def __init__(
        self,
        storage: Storage | None = None,
        *,
        handlers: Handlers | None = None,
        pipelines: Iterable[Pipeline] = (),
        authorize: Authorize | None = None,
        clock: Clock | None = None,
        broker: EventBroker | None = None,
        executor: Executor | None = None,
        limiter: Limiter | None = None,
        classifier: ErrorClassifier | None = None,
        max_concurrency: int = 64,
        lease_seconds: float = 30.0,
        poll_interval: float | Literal["auto"] | None = "auto",
        run_workers: bool = True,
    ) -> None:
        if max_concurrency < 1:
            raise InvalidInput(f"max_concurrency must be at least 1, got {max_concurrency}")
        if lease_seconds <= 0:
            raise InvalidInput(f"lease_seconds must be positive, got {lease_seconds}")
        self.clock: Clock = clock or getattr(storage, "clock", None) or SystemClock()
        self.storage: Storage = storage or MemoryStorage(self.clock)
        self.handlers = handlers or Handlers()
        self.broker: EventBroker = broker or default_broker(self.storage)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._authorize_hook = authorize
        self._run_workers = run_workers
        self._pipelines: dict[str, Pipeline] = {}
        self._by_hash: dict[str, Pipeline] = {}
        self._stack: AsyncExitStack | None = None
        self.clock.on_advance(self.broker.wake_here)
        if poll_interval == "auto":
            # Other processes can change a shared database: look now and then as well.
            shared = not isinstance(self.storage, MemoryStorage)
            poll_interval = self.broker.fallback_poll if shared else None
        # Permits are kept per call and handed back by the executor as the call ends.
        limiter = limiter or self.storage.limiter(self.clock) or RateLimiter(self.clock)
        self.limiter: Limiter = CallPermits(limiter)
        self.engine = Engine(
            storage=self.storage,
            handlers=self.handlers,
            classifier=classifier or ErrorClassifier(),
            executor=ReleasingExecutor(executor or InProcessExecutor()),
            limiter=self.limiter,
            broker=self.broker,
            clock=self.clock,
            owner=self.owner,
            pipeline_for=self._pipeline_for,
            max_concurrency=max_concurrency,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
        )
        self._planner = ActionPlanner(self)
        for pipeline in pipelines:
            self.register(pipeline)

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.storage.start()
            stack.push_async_callback(self.storage.aclose)
            await self.limiter.start()
            stack.push_async_callback(self.limiter.aclose)
            await self.broker.start()
            stack.push_async_callback(self.broker.aclose)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            await tg.start(self.engine.run if self._run_workers else self.engine.run_writer)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # The host's own exception (if any) propagates as it is, not inside an
            # exception group: the engine is stopped as on a normal exit.
            await stack.aclose()

    async def drain(self, grace: float = 30.0) -> bool:
        """Stop taking new work; wait up to ``grace`` seconds for running work to end.

        For a graceful shutdown (a worker on SIGTERM): afterwards leave the ``async
        with``; anything still running then is cancelled and handed back at once.
        Returns ``True`` if all running work finished within ``grace``.
        """
        return await self.engine.drain(grace)

    # -- definitions ------------------------------------------------------------------

    def register(self, pipeline: Pipeline) -> Pipeline:
        """Make ``pipeline`` available by name; its handler keys must all be bound."""
        self.handlers.check(pipeline)
        self._pipelines[pipeline.name] = pipeline
        self._by_hash[pipeline.content_hash] = pipeline
        return pipeline

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self._pipelines[name]
        except KeyError:
            raise NotFound("pipeline", name) from None

    def _pipeline_for(self, job: JobRecord) -> Pipeline:
        found = self._by_hash.get(job.definition_hash)
        if found is None:
            found = Pipeline.load(job.definition)
            self.handlers.check(found)
            self._by_hash[job.definition_hash] = found
        return found

    # -- creating and steering jobs ----------------------------------------------------

    async def create_job(
        self,
        pipeline: str | Pipeline,
        items: Iterable[ItemInput | Mapping[str, Any]],
        *,
        auto_process: bool = True,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        actor: ActorLike = "system",
        start: bool = True,
    ) -> Job:
        """Create a job over ``items``; started at once unless ``start=False`` (draft).

        The same ``idempotency_key`` returns the job it created the first time and
        writes nothing. The job pins the pipeline's version and content hash.
        """
        definition = pipeline if isinstance(pipeline, Pipeline) else self.pipeline(pipeline)
        if definition.content_hash not in self._by_hash:
            self.register(definition)
        who = _actor(actor)
        parsed = self._parse_items(items)
        meta = dict(metadata or {})
        check_json(meta, "metadata")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 256:
            raise InvalidInput("idempotency_key must have 1 to 256 characters")
        await self._authorize(
            ActionRequest(action="create", actor=who, job_id="", pipeline=definition.name)
        )
        now = self.clock.now()
        job = JobRecord(
            id=new_id(),
            pipeline=definition.name,
            version=definition.version,
            definition_hash=definition.content_hash,
            definition=definition.to_dict(),
            steps=tuple(StepInfo(s.key, s.runs_work, s.concurrency) for s in definition.steps),
            status=JobStatus.DRAFT,
            auto_process=auto_process,
            metadata=meta,
            idempotency_key=idempotency_key,
            created_by=who.id,
            created_at=now,
            updated_at=now,
        )
        change = ChangeSet(job.id, actor=who.id)
        change.events.append(
            EventDraft(
                "job.created",
                data={
                    "pipeline": definition.name,
                    "version": definition.version,
                    "hash": definition.content_hash,
                    "items": len(parsed),
                },
            )
        )

        def add_items(part: ChangeSet, first: int) -> None:
            for item_input in parsed[first : first + _CREATION_PART]:
                item = new_item(job.id, item_input.key, dict(item_input.data), 0, now)
                part.new_items.append(item)
                part.new_visits.extend(arrive(definition, item, 0, meta, {}, now))

        add_items(change, 0)
        if len(parsed) <= _CREATION_PART:
            change.job_status = JobStatus.PENDING if start else None
            change.create = job
            # Through the one writer: jobs created together share a transaction, and
            # the new job's first work is claimed in the transaction that creates it.
            created = await self.engine.commit(change)
            assert created.job is not None
            stored = created.job
        else:
            # Too large to hold at once: the storage builds and writes it part by part,
            # in one transaction of its own.
            parts = _Parts(job.id, who.id, len(parsed), add_items, start)
            stored, _ = await self.storage.create_job(job, change, more=parts)
        self.broker.publish_job(stored.id, stored.seq)
        self.broker.publish_work()
        return job_view(stored)

    def _parse_items(self, items: Iterable[ItemInput | Mapping[str, Any]]) -> list[ItemInput]:
        parsed: list[ItemInput] = []
        seen: set[str] = set()
        for index, raw in enumerate(items):
            try:
                item = raw if isinstance(raw, ItemInput) else ItemInput.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InvalidInput(f"items[{index}].{where}: {first['msg']}") from None
            if item.key in seen:
                raise InvalidInput(f"items[{index}].key: duplicate item key {item.key!r}")
            seen.add(item.key)
            check_json(item.data, "item data")
            parsed.append(item)
        return parsed

    async def start_job(
        self, job_id: str, *, actor: ActorLike = "system", action_id: str | None = None
    ) -> ActionResult:
        """Start a draft job."""
        return await self._act(
            "start",
            job_id,
            actor,
            action_id,
            plan=self._planner.job_status(JobStatus.PENDING, {JobStatus.DRAFT}),
        )

    async def pause_job(
        self, job_id: str, *, actor: ActorLike = "system", action_id: str | None = None
    ) -> ActionResult:
        """Stop claiming new work for the job; running handlers finish."""
        return await self._act(
            "pause",
            job_id,
            actor,
            action_id,
            plan=self._planner.job_status(
                JobStatus.PAUSED, {JobStatus.PENDING, JobStatus.IN_PROGRESS}
            ),
        )

    async def resume_job(
        self, job_id: str, *, actor: ActorLike = "system", action_id: str | None = None
    ) -> ActionResult:
        """Resume a paused job."""
        return await self._act(
            "resume",
            job_id,
            actor,
            action_id,
            plan=self._planner.job_status(JobStatus.IN_PROGRESS, {JobStatus.PAUSED}),
        )

    async def cancel_job(
        self, job_id: str, *, actor: ActorLike = "system", action_id: str | None = None
    ) -> ActionResult:
        """Cancel the job: every open item is cancelled, running handlers are cancelled."""
        result = await self._act("cancel", job_id, actor, action_id, plan=self._planner.cancel)
        self.engine.cancel_job(job_id)
        return result

    async def process_step(
        self, job_id: str, step: str, *, actor: ActorLike = "system", action_id: str | None = None
    ) -> ActionResult:
        """Start processing a step's available items (needed when ``auto_process`` is off)."""
        return await self._act(
            "process", job_id, actor, action_id, step=step, plan=self._planner.process(step)
        )

    async def pass_items(
        self,
        job_id: str,
        step: str,
        item_ids: Sequence[str] | None = None,
        *,
        start_next: bool = False,
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Pass items on from ``step`` (default: all ``processed`` ones there).

        Processed, available and failed items can be passed. ``start_next`` also
        starts the next step when the job does not process steps automatically.
        """
        return await self._act(
            "pass",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=item_ids,
            plan=self._planner.pass_items(step, item_ids, start_next),
        )

    async def discard_items(
        self,
        job_id: str,
        step: str,
        item_ids: Sequence[str],
        *,
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Take items out of the job at ``step`` (they end ``cancelled``)."""
        result = await self._act(
            "discard",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=item_ids,
            plan=self._planner.discard(step, item_ids),
        )
        for item_id in result.affected:
            self.engine.abandon(f"{item_id}/{step}")
        return result

    async def submit(
        self,
        job_id: str,
        step: str,
        payloads: Mapping[str, Mapping[str, Any]],
        *,
        defaults: Mapping[str, Any] | None = None,
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Submit a person's payload for one or many items waiting at ``step``.

        ``payloads`` maps item id to payload; ``defaults`` ("apply to all") is merged
        under each (per-item values win, nested mappings merge). Every payload is
        validated by the step's action model and validator first; if any fails,
        :class:`ActionRejected` lists them all and nothing is written.
        """
        return await self._act(
            "submit",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=list(payloads),
            plan=self._planner.submit(step, payloads, defaults or {}),
        )

    async def retry_items(
        self,
        job_id: str,
        step: str,
        item_ids: Sequence[str] | None = None,
        *,
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Run failed items at ``step`` again (default: all of them).

        For a step with sub-steps only what did not complete runs again.
        """
        return await self._act(
            "retry",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=item_ids,
            plan=self._planner.retry(step, item_ids),
        )

    async def skip_item(
        self,
        job_id: str,
        step: str,
        item_id: str,
        *,
        reason: str = "skipped",
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Let an item move on without this step's work (it ends ``skipped`` here)."""
        return await self._act(
            "skip",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=[item_id],
            plan=self._planner.skip(step, item_id, reason),
        )

    async def mark_substep(
        self,
        job_id: str,
        step: str,
        item_id: str,
        substep: str,
        status: Literal["completed", "failed", "skipped"],
        *,
        reason: str | None = None,
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Set a sub-step's status by hand; completed/skipped need its dependencies done."""
        return await self._act(
            "mark",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=[item_id],
            substep=substep,
            plan=self._planner.mark(step, item_id, substep, status, reason),
        )

    async def reset_substep(
        self,
        job_id: str,
        step: str,
        item_id: str,
        substep: str,
        *,
        dependents: bool = True,
        actor: ActorLike = "system",
        action_id: str | None = None,
    ) -> ActionResult:
        """Put a sub-step (and, by default, everything depending on it) back to pending."""
        return await self._act(
            "reset",
            job_id,
            actor,
            action_id,
            step=step,
            item_ids=[item_id],
            substep=substep,
            plan=self._planner.reset(step, item_id, substep, dependents),
        )

    async def _authorize(self, request: ActionRequest) -> None:
        if self._authorize_hook is None:
            return
        allowed = self._authorize_hook(request)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if allowed is not True:
            raise PermissionDenied(request.actor.id, request.action, request.job_id)

    async def _act(
        self,
        action: str,
        job_id: str,
        actor: ActorLike,
        action_id: str | None,
        *,
        plan: Callable[[JobRecord, Pipeline], Awaitable[tuple[ChangeSet, list[str]]]],
        step: str | None = None,
        item_ids: Sequence[str] | None = None,
        substep: str | None = None,
    ) -> ActionResult:
        who = _actor(actor)
        if action_id is not None and not 0 < len(action_id) <= 256:
            raise InvalidInput("action_id must have 1 to 256 characters")
        # The job, the action id's earlier result and the named items: one read.
        named = set(item_ids or ())
        reads = await self.storage.action_reads(job_id, action_id, step, named)
        job = reads.job
        pipeline = self._pipeline_for(job)
        if step is not None:
            pipeline.step(step)
        await self._authorize(
            ActionRequest(
                action=action,
                actor=who,
                job_id=job_id,
                pipeline=job.pipeline,
                step=step,
                item_ids=tuple(item_ids or ()),
                substep=substep,
            )
        )
        if reads.previous is not None:
            assert action_id is not None
            return self._duplicate(action, job_id, action_id, reads.previous, job.seq)
        for _ in range(_PLAN_RETRIES):
            ahead = READ_AHEAD.set(reads)  # the plan reuses what was just read
            try:
                change, affected = await plan(job, pipeline)
            finally:
                READ_AHEAD.reset(ahead)
            change.actor = who.id
            change.action_id = action_id
            change.action_result = {"affected": affected}
            change.events.insert(
                0,
                EventDraft(
                    "action",
                    step,
                    data={
                        "action": action,
                        "action_id": action_id,
                        "items": len(affected),
                        **({"substep": substep} if substep else {}),
                    },
                ),
            )
            try:
                result = await self.engine.commit(change)
            except DuplicateAction as dup:
                return self._duplicate(action, job_id, action_id, dup.result or {}, job.seq)
            except StaleWrite:  # items moved since the reads: read again, plan again
                reads = await self.storage.action_reads(job_id, None, step, named)
                job = reads.job
                continue
            self.broker.publish_job(job_id, result.seq)
            self.broker.publish_work()
            return ActionResult(
                action=action,
                job_id=job_id,
                action_id=action_id,
                affected=affected,
                version=result.seq,
            )
        raise Conflict(f"{action} on job {job_id}: items kept changing; try again")

    @staticmethod
    def _duplicate(
        action: str, job_id: str, action_id: str | None, previous: Mapping[str, Any], version: int
    ) -> ActionResult:
        return ActionResult(
            action=action,
            job_id=job_id,
            action_id=action_id,
            affected=list(previous.get("affected", [])),
            version=version,
            duplicate=True,
        )

    # -- reading ------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        return job_view(await self.storage.get_job(job_id))

    async def snapshot(self, job_id: str) -> Snapshot:
        """The job, each step's status and counts, sub-step phases and available actions."""
        progress = await self.storage.progress(job_id)
        return build_snapshot(progress, self._pipeline_for(progress.job))

    async def list_items(
        self,
        job_id: str,
        step: str,
        *,
        status: ItemStatus | str | Iterable[ItemStatus | str] | None = None,
        cursor: int | None = None,
        limit: int = 100,
    ) -> ItemPage:
        """A page of the items at ``step`` (optionally only some statuses), in item order."""
        if not 0 < limit <= 1000:
            raise InvalidInput(f"limit must be between 1 and 1000, got {limit}")
        job = await self.storage.get_job(job_id)
        self._pipeline_for(job).step(step)
        statuses: set[ItemStatus] | None = None
        if status is not None:
            raw = [status] if isinstance(status, str) else list(status)
            try:
                statuses = {ItemStatus(s) for s in raw}
            except ValueError as exc:
                raise InvalidInput(f"status: {exc}") from None
        rows = await self.storage.list_visits(job_id, step, statuses, cursor or 0, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        page = [
            Item(
                id=item.id,
                key=item.key,
                data=item.data,
                step=v.step,
                status=v.status,
                attempts=v.attempts,
                input=v.input,
                output=v.output,
                error=v.error,
                reason=v.reason,
                substeps=v.substeps,
                progress=v.progress,
                next_attempt_at=v.next_attempt_at,
                position=v.position,
                updated_at=v.updated_at,
            )
            for item, v in rows
        ]
        return ItemPage(items=page, next_cursor=rows[-1][1].position if more and rows else None)

    async def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        """Events with ``seq > after``, in order."""
        if not 0 < limit <= 10_000:
            raise InvalidInput(f"limit must be between 1 and 10000, got {limit}")
        records = await self.storage.read_events(job_id, after, limit)
        return [
            Event(
                job_id=r.job_id,
                seq=r.seq,
                type=r.type,
                at=r.at,
                actor=r.actor,
                step=r.step,
                item_id=r.item_id,
                data=r.data,
            )
            for r in records
        ]

    async def watch(
        self, job_id: str, *, after: int = 0, until_final: bool = True
    ) -> AsyncIterator[Event]:
        """Yield events as they happen; ends once the job is final (``until_final``)."""
        await self.storage.get_job(job_id)
        while True:
            batch = await self.events(job_id, after=after)
            for event in batch:
                yield event
                after = event.seq
            if batch:
                continue
            if until_final and (await self.storage.get_job(job_id)).status in JOB_TERMINAL:
                return
            await self.broker.wait_job(job_id, after, timeout=5.0)

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Snapshot:
        """Wait until nothing runs: the job is final, paused, or waits only for people.

        Returns the snapshot at that moment; raises ``TimeoutError`` after ``timeout``.
        """
        with anyio.fail_after(timeout):
            # The first look reads everything (a job already settled answers at once).
            # After that, a wake-up by this process's own write reads nothing when that
            # write left the job busy, and everything at once when it settled it (the
            # engine's view says which, for exactly that seq); any other wake-up reads
            # the job's row alone, and the rest once the job looks done.
            progress: JobProgress | None = await self.storage.progress(job_id)
            seq = 0
            while True:
                if progress is not None:
                    if is_settled(progress.job.status, progress.step_statuses):
                        return build_snapshot(progress, self._pipeline_for(progress.job))
                    seq = progress.job.seq  # moved on since: wait for what comes next
                woken = await self.broker.wait_job(job_id, seq, timeout=1.0)
                view = self.engine.job_view(job_id) if woken else None
                if view is not None and view[0] > seq:
                    if view[1]:
                        progress = await self.storage.progress(job_id)
                    else:
                        seq, progress = view[0], None
                    continue
                job, statuses = await self.storage.step_statuses(job_id)
                seq = job.seq
                settled = is_settled(job.status, statuses)
                progress = await self.storage.progress(job_id) if settled else None
