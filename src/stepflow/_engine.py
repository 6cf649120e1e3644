"""The engine: claims due work, runs handlers and sub-step graphs, commits results.

Design decision: a fixed pool of long-lived worker tasks pulls claims from one
dispatcher through a hand-off queue, instead of a task spawned per item; each worker
runs its claims inside one cancel scope, renewed only after a claim is cancelled. The
dispatcher is also the engine's only writer: workers hand it what their work did (a
change set), as do a person's actions and job creations in this process, and it applies
everything that finished while its previous write was in flight, and claims work for
the workers that freed, in ONE storage exchange — group commit, so the database's commit
rate is not the ceiling, and nothing is acknowledged before it is durable. It sleeps on
the event broker (or until the next retry is due) when there is nothing to write or
claim, and rides out a storage outage by backing off and offering the same changes again
(their guards make a repeat harmless). It remembers what each write left of a job (its
version and whether it settled), so a waiter woken by this process's own write need not
read the job. Everything a result does to the state is built by
:mod:`stepflow._planning`; a result whose lease was lost (fencing token) or whose job
was cancelled is refused by its guard, never half-applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._conditions import evaluate
from ._definitions import ErrorKind, Pipeline, Step, SubStep
from ._errors import InvalidInput, StaleWrite, StepflowError
from ._handlers import AskPerson, ErrorClassifier, Failure, HandlerContext, Handlers, SkipItem
from ._handoff import Handoff
from ._jsonsafe import check_json
from ._planning import (
    condition_context,
    follow,
    leave,
    new_item,
    new_substep_state,
    visit_id,
)
from ._records import (
    ChangeSet,
    Claim,
    CommitResult,
    EventDraft,
    JobRecord,
    VisitChange,
    VisitRecord,
)
from ._retry import retry_delay
from ._states import SUBSTEP_DONE, ItemStatus, SubStepStatus, is_settled
from .ports import Clock, EventBroker, Executor, Limiter, Storage

__all__ = ["Engine"]

log = logging.getLogger("stepflow.engine")
U = SubStepStatus

#: Jobs whose last committed state this engine remembers for waiters (oldest go first).
_VIEWS_KEPT = 10_000


class _Abandoned(Exception):
    """The visit's lease was lost or its job cancelled while sub-steps ran."""


def _brief(exc: BaseException) -> str:
    """The error's type and first line: never its SQL, parameters or a connection URL."""
    cause = getattr(exc, "orig", None) or exc  # a driver error wrapped by SQLAlchemy
    first = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {first[0] if first else ''}"


@dataclass(slots=True, eq=False)
class _Write:
    """A change handed to the dispatcher; ``done`` is set once its result is known."""

    change: ChangeSet
    done: anyio.Event | None = None  #: ``None``: nobody waits (a worker's final result)
    result: CommitResult | Exception | None = None


@dataclass(slots=True)
class _Running:
    claim: Claim
    scope: anyio.CancelScope  #: the scope of the worker running it: cancels this claim only
    contexts: list[HandlerContext] = field(default_factory=list)


class Engine:
    """Runs claimed work for one orchestrator (one process, one incarnation)."""

    def __init__(
        self,
        *,
        storage: Storage,
        handlers: Handlers,
        classifier: ErrorClassifier,
        executor: Executor,
        limiter: Limiter,
        broker: EventBroker,
        clock: Clock,
        owner: str,
        pipeline_for: Callable[[JobRecord], Pipeline],
        max_concurrency: int,
        lease_seconds: float,
        poll_interval: float | None,
    ) -> None:
        self.storage = storage
        self.handlers = handlers
        self.classifier = classifier
        self.executor = executor
        self.broker = broker
        self.clock = clock
        self.owner = owner
        self.pipeline_for = pipeline_for
        self.max_concurrency = max_concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.rate_limiter = limiter
        self.running: dict[tuple[str, int], _Running] = {}  #: by (visit id, token)
        self._busy = 0  #: claims handed to workers whose result is not yet handed back
        self._outbox: list[_Write] = []  #: changes waiting for the dispatcher's next write
        self._writing = 0  #: changes in the dispatcher's write now in flight
        self._wake = anyio.Event()  #: set when the outbox gets something
        self.draining = False  #: set by :meth:`drain`: claim nothing new
        self._idle: anyio.Event | None = None
        self.writes = 0  #: storage exchanges made (for benchmarks and tests)
        self._failures = 0  #: storage writes failed in a row (the database is away)
        self._dispatching = False  #: the dispatcher runs and takes changes
        self.claiming = True  #: ``False``: a writer only (:meth:`run_writer`)
        #: Per job, the newest ``(seq, settled)`` this engine committed: a waiter woken
        #: by this process's own write learns from it whether to read the job at all.
        self._views: dict[str, tuple[int, bool]] = {}

    # -- lifecycle ------------------------------------------------------------------

    async def run_writer(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run only the one writer until cancelled, for a process that runs no work.

        Jobs created and actions taken at the same time in such a process (an API
        server) then share transactions too; nothing is claimed here.
        """
        self.claiming = False
        self._wake = anyio.Event()
        task_status.started()
        await self._write_until_cancelled(Handoff[Claim]())

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: dispatcher, workers, heartbeat, rescuer, progress."""
        self.claiming = True
        await self.storage.rescue_expired(self._rescue_delay)  # startup recovery
        self._wake = anyio.Event()  # bound to this run's event loop
        # Never more claims handed out than workers: one waits for a worker only while
        # the worker that freed it hands its result in.
        handoff = Handoff[Claim]()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.max_concurrency):
                    tg.start_soon(self._worker, handoff)
                tg.start_soon(self._heartbeat)
                tg.start_soon(self._flush_progress)
                tg.start_soon(self._hear_broker)
                task_status.started()
                await self._write_until_cancelled(handoff)
        finally:
            unstarted = handoff.take_all()
            if unstarted:  # claimed, never started: hand them back at once
                with anyio.CancelScope(shield=True), suppress(Exception):
                    keys = [(c.visit.id, c.visit.token) for c in unstarted]
                    await self.storage.release(self.owner, keys)

    # -- the one writer -------------------------------------------------------------

    async def _write_until_cancelled(self, handoff: Handoff[Claim]) -> None:
        """Be the writer; when stopped, write what was handed in but not yet written."""
        self._dispatching = True
        try:
            await self._dispatch(handoff)
        finally:
            self._dispatching = False
            with anyio.CancelScope(shield=True):
                await self._flush_at_exit()

    async def _dispatch(self, handoff: Handoff[Claim]) -> None:
        while True:
            writes, self._outbox = self._outbox, []
            self._wake = anyio.Event()
            free = 0 if self.draining or not self.claiming else self.max_concurrency - self._busy
            if not writes and not free:
                await self._sleep(None)
                continue
            self._writing = len(writes)
            try:
                results, claims = await self.storage.exchange(
                    [w.change for w in writes], self.owner, free, self.lease_seconds
                )
            except Exception as exc:  # noqa: BLE001 - the database went away: back off
                self._writing = 0
                self._outbox[:0] = writes  # offer them again, first, in the same order
                self._failures += 1
                delay = min(2.0, 0.05 * 2 ** min(self._failures, 6))
                log.warning("storage write failed (%s); retrying in %.2f s", _brief(exc), delay)
                await anyio.sleep(delay)
                continue
            self._failures = 0
            self.writes += 1
            self._writing = 0
            # Workers first: the work a person's action released starts before the
            # action's caller is woken with its result.
            for claim in claims:
                self._busy += 1
                handoff.put(claim)
                # A claimed item is processing: its step is busy, so the job is not settled.
                self._publish(claim.job.id, claim.job.seq, settled=False)
            self._settle(writes, results)
            self._check_idle()
            if writes or claims:
                continue
            due = await self.storage.next_due()
            await self._sleep(None if due is None else self.clock.timeout_seconds(due))

    async def _sleep(self, timeout: float | None) -> None:
        """Until a change is handed in, the broker says work arrived, or ``timeout``.

        The broker is heard by :meth:`_hear_broker`, which sets the same event as a
        change handed in: waking costs one event, not a task spawned and cancelled.
        """
        if self._outbox:
            return
        with anyio.move_on_after(timeout):
            await self._wake.wait()

    async def _hear_broker(self) -> None:
        """For as long as the engine runs: each time the broker says work may be
        claimable (or ``poll_interval`` passes), wake the dispatcher. A word heard while
        the dispatcher writes wakes its next sleep at once, as its event is made new
        before each write."""
        while True:
            await self.broker.wait_work(self.poll_interval)
            self._wake.set()

    def _settle(self, writes: list[_Write], results: list[CommitResult | Exception]) -> None:
        for write, result in zip(writes, results, strict=True):
            write.result = result
            if write.done is not None:
                write.done.set()
            elif isinstance(result, StaleWrite):
                log.info("result refused: %s", result)
            elif isinstance(result, Exception):
                log.error("result of job %s refused: %r", write.change.job_id, result)
            if isinstance(result, CommitResult):
                settled = is_settled(result.job_status, result.step_statuses)
                self._publish(result.job_id, result.seq, settled=settled)

    async def _flush_at_exit(self) -> None:
        """Write what workers handed back before stopping (nothing new is claimed)."""
        writes, self._outbox = self._outbox, []
        if not writes:
            return
        try:
            results, _ = await self.storage.exchange(
                [w.change for w in writes], self.owner, 0, self.lease_seconds
            )
        except Exception as exc:  # noqa: BLE001 - leases expire and the work is rescued
            log.error("could not write %d results at shutdown (%s)", len(writes), _brief(exc))
            return
        self._settle(writes, results)

    def _hand_in(self, write: _Write) -> None:
        self._outbox.append(write)
        self._wake.set()

    async def commit(self, change: ChangeSet) -> CommitResult:
        """Commit ``change``, with the work it makes due claimed in the same write.

        A change with ``create`` set creates its job (see :meth:`Storage.exchange`).

        For a person's action in a process that runs workers: the dispatcher's next
        exchange applies it and hands what it released straight to a free worker, so
        no second transaction (nor a wake-up) stands between the action and the work.
        Falls back to a plain storage commit while the dispatcher is not running or
        the database is failing (the caller then sees the error at once).
        """
        if not self._dispatching or self._failures:
            results, _ = await self.storage.exchange([change], self.owner, 0, self.lease_seconds)
            if isinstance(results[0], Exception):
                raise results[0]
            return results[0]
        return await self._commit(change)

    async def _commit(self, change: ChangeSet) -> CommitResult:
        """Commit ``change`` through the dispatcher's next write; raise if refused."""
        write = _Write(change, anyio.Event())
        self._hand_in(write)
        assert write.done is not None
        await write.done.wait()
        if isinstance(write.result, Exception):
            raise write.result
        assert write.result is not None
        return write.result

    def _check_idle(self) -> None:
        if self._idle is not None and not (self._busy or self._outbox or self._writing):
            self._idle.set()

    async def _worker(self, handoff: Handoff[Claim]) -> None:
        while True:
            # One cancel scope serves this worker's claims, one at a time, until one of
            # them is cancelled (making and entering an anyio scope costs more than a
            # no-op claim costs to run). Cancelling it reaches only the claim running
            # in it: the worker checks between claims and then starts a new scope.
            with anyio.CancelScope() as scope:
                while not scope.cancel_called:
                    claim = await handoff.get()
                    change: ChangeSet | None = None
                    try:
                        change = await self._process(claim, scope)
                    except Exception:  # a bug in stepflow must not kill the worker pool
                        log.exception("processing %s failed", claim.visit.id)
                    finally:
                        if change is not None:
                            self._hand_in(_Write(change))
                        self._busy -= 1
                        self._wake.set()  # a worker is free: the dispatcher may claim for it
                        self._check_idle()

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            try:
                held = list(self.running)
                if held:
                    kept = await self.storage.renew(self.owner, held, self.lease_seconds)
                    for lost in set(held) - kept:
                        self._cancel(lost)
                if await self.storage.rescue_expired(self._rescue_delay):
                    self.broker.publish_work()
            except StepflowError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database went away: next beat
                log.warning("heartbeat failed (%s); trying again next beat", _brief(exc))

    async def _flush_progress(self) -> None:
        while True:
            await anyio.sleep(0.2)
            for running in list(self.running.values()):
                for ctx in running.contexts:
                    if ctx.progress_dirty:
                        ctx.progress_dirty = False
                        await self._write_progress(running.claim, ctx)

    async def _write_progress(self, claim: Claim, ctx: HandlerContext) -> None:
        change = ChangeSet(claim.job.id, actor=self.owner)
        change.visits.append(
            VisitChange(
                claim.visit.id,
                ItemStatus.PROCESSING,
                token=claim.visit.token,
                fields={"progress": ctx.progress},
            )
        )
        data = dict(ctx.progress or {})
        if ctx.substep is not None:
            data["substep"] = ctx.substep.key
        change.events.append(EventDraft("item.progress", claim.visit.step, claim.item.id, data))
        with suppress(StaleWrite):
            await self._commit(change)

    def _rescue_delay(self, job: JobRecord, visit: VisitRecord) -> float | None:
        step = self.pipeline_for(job).step(visit.step)
        failure = Failure(ErrorKind.TIMEOUT, "lease expired", "LeaseExpired")
        return retry_delay(step.retry, failure, visit.attempts - visit.retry_base)

    async def drain(self, grace: float) -> bool:
        """Stop claiming and let running work finish for up to ``grace`` seconds.

        Returns ``True`` when everything finished in time. Whatever still runs after
        that is cancelled when the engine stops, and handed back to the storage.
        """
        self.draining = True
        self._wake.set()
        with anyio.move_on_after(grace):
            while self._busy or self._outbox or self._writing:
                self._idle = anyio.Event()
                await self._idle.wait()
            return True
        return False

    def _cancel(self, key: tuple[str, int]) -> None:
        running = self.running.get(key)
        if running is not None:
            for ctx in running.contexts:
                ctx._cancelled = True
            running.scope.cancel()

    def abandon(self, visit: str) -> None:
        """Cancel every run of ``visit`` here (its job was cancelled or it was discarded)."""
        for key in [k for k in self.running if k[0] == visit]:
            self._cancel(key)

    def cancel_job(self, job_id: str) -> None:
        for key, running in list(self.running.items()):
            if running.claim.job.id == job_id:
                self._cancel(key)

    def _publish(self, job_id: str, seq: int, *, settled: bool) -> None:
        """Remember what this write left of the job, then tell the broker (in this order:
        a waiter the broker wakes finds the view already there)."""
        views = self._views
        known = views.get(job_id)
        if known is None or seq > known[0]:
            views[job_id] = (seq, settled)
            if len(views) > _VIEWS_KEPT:
                del views[next(iter(views))]
        self.broker.publish_job(job_id, seq)

    def job_view(self, job_id: str) -> tuple[int, bool] | None:
        """The newest ``(seq, settled)`` of ``job_id`` this engine committed, if it
        remembers one: exactly the job's state at that ``seq``, whoever moved it since."""
        return self._views.get(job_id)

    # -- one claim ------------------------------------------------------------------

    async def _process(self, claim: Claim, scope: anyio.CancelScope) -> ChangeSet | None:
        """Run one claim inside the worker's ``scope``; return the change its result
        makes (``None``: nothing to write). A cancellation of ``scope`` (the claim was
        abandoned) leaves here as the cancellation exception, for the scope to absorb."""
        pipeline = self.pipeline_for(claim.job)
        step = pipeline.step(claim.visit.step)
        key = (claim.visit.id, claim.visit.token)
        self.running[key] = running = _Running(claim, scope)
        change: ChangeSet | None = None
        try:
            if step.substeps:
                change = await self._run_substeps(running, pipeline, step)
            else:
                change = await self._run_handler(running, pipeline, step)
        except _Abandoned:
            change = None
        except anyio.get_cancelled_exc_class():
            if not scope.cancel_called:
                # Shutting down: hand the visit back at once instead of letting it expire.
                with anyio.CancelScope(shield=True):
                    await self.storage.release(self.owner, [key])
            raise
        finally:
            del self.running[key]
        if change is None or scope.cancel_called:
            return None
        return change

    def _context(
        self,
        claim: Claim,
        pipeline: Pipeline,
        step: Step,
        substep: SubStep | None,
        attempt: int,
        substep_outputs: dict[str, Any],
    ) -> HandlerContext:
        return HandlerContext(
            job_id=claim.job.id,
            job_metadata=claim.job.metadata,
            pipeline=pipeline,
            step=step,
            substep=substep,
            item_id=claim.item.id,
            item_key=claim.item.key,
            data=claim.item.data,
            attempt=attempt,
            outputs=claim.outputs,
            substep_outputs=substep_outputs,
            input=claim.visit.input,
        )

    async def _call(
        self, running: _Running, ctx: HandlerContext, handler_key: str, timeout: float | None
    ) -> Any:
        """Run one handler call; return its checked output or raise what it raised."""
        func, is_async = self.handlers.get(handler_key)
        running.contexts.append(ctx)
        guard: AbstractContextManager[Any] = anyio.fail_after(timeout) if timeout else nullcontext()
        try:
            with guard:
                output = await self.executor.run(func, ctx, is_async=is_async)
        except BaseException:
            ctx._cancelled = True  # a plain handler still running in its thread can stop
            raise
        finally:
            running.contexts.remove(ctx)
        check_json(output, "output")
        return output

    def _classify(self, exc: Exception) -> Failure:
        if isinstance(exc, InvalidInput):
            return Failure(ErrorKind.PERMANENT, str(exc), type(exc).__name__)
        return self.classifier.classify(exc)

    async def _run_handler(self, running: _Running, pipeline: Pipeline, step: Step) -> ChangeSet:
        claim = running.claim
        visit = claim.visit
        ctx = self._context(claim, pipeline, step, None, visit.attempts, {})
        assert step.handler is not None
        if step.rate_limit is not None:
            await self.rate_limiter.acquire(step.rate_limit, step.handler)
        now = self.clock.now
        change = ChangeSet(claim.job.id, actor=self.owner)
        done: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        try:
            output = await self._call(running, ctx, step.handler, step.timeout)
        except AskPerson as ask:
            if step.action is not None:
                change.visits.append(
                    self._change(claim, ItemStatus.AWAITING_INPUT, done, reason=ask.reason)
                )
                return change
            done["error"] = Failure(
                ErrorKind.PERMANENT,
                f"asked for a person ({ask.reason}) but step {step.key!r} has no action",
                "AskPerson",
            ).as_error(visit.attempts)
            done["finished_at"] = now()
            change.visits.append(self._change(claim, ItemStatus.FAILED, done, reason="permanent"))
            return change
        except SkipItem as skip:
            done["finished_at"] = now()
            change.visits.append(self._change(claim, ItemStatus.SKIPPED, done, reason=skip.reason))
            follow(change, pipeline, claim.item, step, claim.job.metadata, claim.outputs, now())
            return change
        except Exception as exc:  # noqa: BLE001 - any handler failure is classified
            failure = self._classify(exc)
            delay = retry_delay(step.retry, failure, visit.attempts - visit.retry_base)
            done["error"] = failure.as_error(visit.attempts)
            if delay is None:
                done["finished_at"] = now()
                change.visits.append(
                    self._change(claim, ItemStatus.FAILED, done, reason=failure.kind.value)
                )
            else:
                done["next_attempt_at"] = now() + delay
                change.visits.append(
                    self._change(claim, ItemStatus.RETRYING, done, reason=failure.kind.value)
                )
            return change
        self._succeed(change, claim, pipeline, step, output, ctx.emitted, done)
        return change

    def _change(
        self, claim: Claim, status: ItemStatus, fields: dict[str, Any], reason: str | None = None
    ) -> VisitChange:
        fields = {**fields, "reason": reason}
        return VisitChange(
            claim.visit.id,
            ItemStatus.PROCESSING,
            status=status,
            token=claim.visit.token,
            fields=fields,
            reason=reason,
        )

    def _succeed(
        self,
        change: ChangeSet,
        claim: Claim,
        pipeline: Pipeline,
        step: Step,
        output: Any,
        emitted: list[tuple[str, dict[str, Any]]],
        fields: dict[str, Any],
    ) -> None:
        now = self.clock.now()
        fields = {**fields, "output": output, "error": None, "finished_at": now}
        meta = claim.job.metadata
        for key, data in emitted:
            item = new_item(claim.job.id, key, data, 0, now, parent_id=claim.item.id)
            change.new_items.append(item)
            status = ItemStatus.PASSED if step.advance == "auto" else ItemStatus.PROCESSED
            change.new_visits.append(
                VisitRecord(
                    visit_id(item.id, step.key),
                    item.job_id,
                    item.id,
                    step.key,
                    status,
                    now,
                    now,
                    output=data,
                    finished_at=now,
                )
            )
            if status is ItemStatus.PASSED:
                follow(change, pipeline, item, step, meta, {step.key: data}, now)
        if step.expands and emitted:
            reason = f"expanded into {len(emitted)} items"
            change.visits.append(self._change(claim, ItemStatus.CANCELLED, fields, reason=reason))
            return
        change.visits.append(self._change(claim, ItemStatus.PROCESSED, fields))
        if step.advance == "auto":
            outputs = {**claim.outputs, step.key: output}
            leave(
                change,
                pipeline,
                claim.item,
                step,
                meta,
                outputs,
                now,
                from_status=ItemStatus.PROCESSED,
            )

    # -- sub-steps --------------------------------------------------------------------

    async def _run_substeps(self, running: _Running, pipeline: Pipeline, step: Step) -> ChangeSet:
        claim = running.claim
        states = {k: dict(v) for k, v in claim.visit.substeps.items()}
        for sub in step.substeps:
            state = states.get(sub.key)
            if state is None or state["status"] in (U.IN_PROGRESS, U.RETRYING):
                fresh = {
                    **(state or new_substep_state()),
                    "status": U.PENDING.value,
                    "next_attempt_at": None,
                }
                states[sub.key] = fresh
                await self._save_substep(claim, sub.key, fresh)
        blocked_by: list[str] = []
        done_send, done_receive = anyio.create_memory_object_stream[str](math.inf)
        started: set[str] = set()
        # The streams outlive the task group: cancelled sub-steps still report "done".
        async with done_send, done_receive, anyio.create_task_group() as tg:
            while True:
                if not blocked_by:
                    await self._start_ready(
                        tg, running, pipeline, step, states, started, blocked_by, done_send
                    )
                if not started:
                    break
                started.discard(await done_receive.receive())
        for sub in step.substeps:
            if blocked_by and states[sub.key]["status"] == U.PENDING:
                await self._finish_substep(
                    claim,
                    states,
                    sub.key,
                    U.SKIPPED,
                    cause="blocked",
                    reason=f"stopped: blocking sub-step {blocked_by[0]} failed",
                )
        return self._substeps_result(claim, pipeline, step, states, blocked_by)

    async def _start_ready(
        self,
        tg: anyio.abc.TaskGroup,
        running: _Running,
        pipeline: Pipeline,
        step: Step,
        states: dict[str, dict[str, Any]],
        started: set[str],
        blocked_by: list[str],
        done: anyio.abc.ObjectSendStream[str],
    ) -> None:
        progress = True
        while progress:
            progress = False
            for sub in step.substeps:
                state = states[sub.key]
                if state["status"] != U.PENDING or sub.key in started:
                    continue
                deps = {d: states[d]["status"] for d in sub.depends_on}
                stops = (
                    (U.FAILED, U.SKIPPED) if sub.when_dependency_skipped == "skip" else (U.FAILED,)
                )
                unfinished = [d for d, s in deps.items() if s in stops]
                if unfinished:
                    dep = unfinished[0]
                    await self._finish_substep(
                        running.claim,
                        states,
                        sub.key,
                        U.SKIPPED,
                        reason=f"dependency {dep} {deps[dep]}",
                        cause="dependency",
                    )
                    progress = True
                elif all(s in SUBSTEP_DONE for s in deps.values()):
                    started.add(sub.key)
                    tg.start_soon(
                        self._run_substep, running, pipeline, step, sub, states, blocked_by, done
                    )

    async def _run_substep(
        self,
        running: _Running,
        pipeline: Pipeline,
        step: Step,
        sub: SubStep,
        states: dict[str, dict[str, Any]],
        blocked_by: list[str],
        done: anyio.abc.ObjectSendStream[str],
    ) -> None:
        claim = running.claim
        try:
            outputs = {k: s["output"] for k, s in states.items() if s["status"] == U.COMPLETED}
            context = condition_context(
                claim.item, claim.job.metadata, claim.outputs, claim.visit.input, outputs
            )
            reason = evaluate(sub.run_if, context) if sub.run_if else None
            if reason is not None:
                await self._finish_substep(
                    claim, states, sub.key, U.SKIPPED, reason=reason, cause="condition"
                )
                return
            policy = sub.retry or step.retry
            while True:
                state = states[sub.key]
                attempt = int(state["attempts"]) + 1
                state.update(
                    status=U.IN_PROGRESS.value,
                    attempts=attempt,
                    started_at=state["started_at"] or self.clock.now(),
                    next_attempt_at=None,
                )
                await self._save_substep(claim, sub.key, state)
                if sub.rate_limit is not None:
                    await self.rate_limiter.acquire(sub.rate_limit, sub.handler_key)
                ctx = self._context(claim, pipeline, step, sub, attempt, outputs)
                try:
                    output = await self._call(
                        running, ctx, sub.handler_key, sub.timeout or step.timeout
                    )
                except SkipItem as skip:
                    await self._finish_substep(
                        claim, states, sub.key, U.SKIPPED, reason=skip.reason, cause="handler"
                    )
                    return
                except Exception as exc:  # noqa: BLE001 - classified below
                    failure = (
                        Failure(
                            ErrorKind.PERMANENT, "a sub-step cannot ask for a person", "AskPerson"
                        )
                        if isinstance(exc, AskPerson)
                        else self._classify(exc)
                    )
                    delay = retry_delay(policy, failure, attempt - int(state.get("base") or 0))
                    state["error"] = failure.as_error(attempt)
                    if delay is None:
                        if sub.blocking:  # before the write yields: nothing new may start
                            blocked_by.append(sub.key)
                        await self._finish_substep(
                            claim, states, sub.key, U.FAILED, reason=failure.kind.value
                        )
                        return
                    state.update(
                        status=U.RETRYING.value,
                        reason=failure.kind.value,
                        next_attempt_at=self.clock.now() + delay,
                    )
                    await self._save_substep(claim, sub.key, state)
                    await self.clock.sleep(delay)
                    continue
                state["output"] = output
                await self._finish_substep(claim, states, sub.key, U.COMPLETED)
                return
        finally:
            done.send_nowait(sub.key)  # type: ignore[attr-defined]

    async def _finish_substep(
        self,
        claim: Claim,
        states: dict[str, dict[str, Any]],
        key: str,
        status: SubStepStatus,
        *,
        reason: str | None = None,
        cause: str | None = None,
    ) -> None:
        state = states[key]
        state.update(
            status=status.value,
            reason=reason,
            cause=cause,
            finished_at=self.clock.now(),
            next_attempt_at=None,
        )
        if status is not U.FAILED:
            state["error"] = None
        await self._save_substep(claim, key, state)

    async def _save_substep(self, claim: Claim, key: str, state: dict[str, Any]) -> None:
        change = ChangeSet(claim.job.id, actor=self.owner)
        change.visits.append(
            VisitChange(
                claim.visit.id,
                ItemStatus.PROCESSING,
                token=claim.visit.token,
                substeps={key: dict(state)},
            )
        )
        try:
            await self._commit(change)
        except StaleWrite as exc:
            raise _Abandoned(str(exc)) from None

    def _substeps_result(
        self,
        claim: Claim,
        pipeline: Pipeline,
        step: Step,
        states: dict[str, dict[str, Any]],
        blocked_by: list[str],
    ) -> ChangeSet:
        change = ChangeSet(claim.job.id, actor=self.owner)
        fields: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        failed = [k for k, s in states.items() if s["status"] == U.FAILED]
        if failed:
            message = f"sub-steps failed: {', '.join(failed)}"
            if blocked_by:
                message += f"; stopped by blocking sub-step {blocked_by[0]}"
            fields.update(
                finished_at=self.clock.now(),
                error={
                    "kind": "substeps",
                    "message": message,
                    "failed": failed,
                    "attempt": claim.visit.attempts,
                },
            )
            change.visits.append(self._change(claim, ItemStatus.FAILED, fields, reason=message))
            return change
        output = {k: s["output"] for k, s in states.items() if s["status"] == U.COMPLETED}
        self._succeed(change, claim, pipeline, step, output, [], fields)
        return change
