"""Planning what a person's action changes, from fresh reads of the rows it touches.

Design decision: each action is a small planner that reads only the visits it names,
checks the action's own preconditions (with errors that say which items are in the
wrong status), and returns a :class:`ChangeSet`. The transition table, the counters and
the derived statuses are not consulted here — the commit applies them — so an action
cannot move an item in a way the table forbids, however it was planned.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ._definitions import Pipeline, Step
from ._errors import ActionRejected, Conflict, InvalidInput, NotFound
from ._handlers import ActionContext
from ._jsonsafe import check_json
from ._planning import follow, leave
from ._records import ActionReads, ChangeSet, JobRecord, VisitChange, VisitRecord
from ._states import (
    ITEM_OPEN,
    JOB_TERMINAL,
    SUBSTEP_DONE,
    ItemStatus,
    JobStatus,
    SubStepStatus,
)

if TYPE_CHECKING:
    from ._orchestrator import Orchestrator

__all__ = ["READ_AHEAD", "ActionPlanner", "deep_merge"]

Plan = Callable[[JobRecord, Pipeline], Awaitable[tuple[ChangeSet, list[str]]]]
I, U = ItemStatus, SubStepStatus
_ALL = 10**9
_NOT_CANCELLED = frozenset(JobStatus) - {JobStatus.CANCELLED}
_LIVE = frozenset(JobStatus) - JOB_TERMINAL
_PASSABLE = frozenset({I.PROCESSED, I.AVAILABLE, I.FAILED})
_SKIPPABLE = frozenset({I.AVAILABLE, I.RETRYING, I.AWAITING_INPUT, I.FAILED})
_DISCARDABLE = ITEM_OPEN | {I.FAILED}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_reason(reason: str | None) -> None:
    if reason is not None and len(reason) > 2000:
        raise InvalidInput(f"reason is {len(reason)} characters, over the limit of 2000")


#: What the running action read before planning (set by the orchestrator around a plan).
READ_AHEAD: ContextVar[ActionReads | None] = ContextVar("stepflow_read_ahead", default=None)


def _read_ahead(job: JobRecord, step: str, item_ids: Sequence[str]) -> ActionReads | None:
    """The action's reads, when they were of these items at this step of this job."""
    reads = READ_AHEAD.get()
    if (
        reads is None
        or reads.job is not job
        or reads.step != step
        or reads.item_ids != frozenset(item_ids)
    ):
        return None
    return reads


class ActionPlanner:
    """One planner factory per action; each returns an async ``plan(job, pipeline)``."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orch = orchestrator

    @property
    def _now(self) -> float:
        return self._orch.clock.now()

    async def _visits(
        self,
        job: JobRecord,
        step: str,
        item_ids: Sequence[str] | None,
        allowed: Collection[ItemStatus],
        default: Collection[ItemStatus],
        verb: str,
    ) -> list[VisitRecord]:
        storage = self._orch.storage
        if item_ids is None:
            return await storage.find_visits(job.id, step, default, _ALL)
        if not item_ids:
            raise InvalidInput("item_ids is empty")
        reads = await self._reads_of(job, step, item_ids)
        return self._named(reads.visits, step, item_ids, allowed, verb)

    async def _visits_in_context(
        self,
        job: JobRecord,
        step: str,
        item_ids: Sequence[str] | None,
        allowed: Collection[ItemStatus],
        default: Collection[ItemStatus],
        verb: str,
    ) -> tuple[list[VisitRecord], dict[str, Any], dict[str, dict[str, Any]]]:
        """:meth:`_visits` with the items and their outputs; named items in one read."""
        if item_ids is None or not item_ids:
            visits = await self._visits(job, step, item_ids, allowed, default, verb)
            items, outputs = await self._context(job, visits)
            return visits, items, outputs
        reads = await self._reads_of(job, step, item_ids)
        visits = self._named(reads.visits, step, item_ids, allowed, verb)
        return visits, reads.items, reads.outputs

    async def _reads_of(self, job: JobRecord, step: str, item_ids: Sequence[str]) -> ActionReads:
        """The named items as the action read them ahead of its plan, else read now."""
        reads = _read_ahead(job, step, item_ids)
        if reads is None:
            reads = await self._orch.storage.action_reads(job.id, None, step, set(item_ids))
        return reads

    @staticmethod
    def _named(
        found: Mapping[str, VisitRecord],
        step: str,
        item_ids: Sequence[str],
        allowed: Collection[ItemStatus],
        verb: str,
    ) -> list[VisitRecord]:
        """The visits of ``item_ids`` in that order, each checked to be ``allowed``."""
        for item_id in item_ids:
            if item_id not in found:
                raise NotFound("item at step " + step, item_id)
        wrong = {i: found[i].status.value for i in item_ids if found[i].status not in allowed}
        if wrong:
            shown = ", ".join(f"{i} is {s}" for i, s in wrong.items())
            raise Conflict(f"cannot {verb} at step {step!r}: {shown}")
        return [found[i] for i in dict.fromkeys(item_ids)]

    def job_status(self, to: JobStatus, allowed: set[JobStatus]) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            if job.status not in allowed:
                raise Conflict(f"job {job.id} is {job.status}; cannot make it {to}")
            return ChangeSet(job.id, job_status=to, expect_job=frozenset(allowed)), []

        return plan

    async def cancel(self, job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
        if job.status in JOB_TERMINAL:
            raise Conflict(f"job {job.id} is already {job.status}")
        change = ChangeSet(job.id, job_status=JobStatus.CANCELLED, expect_job=_LIVE)
        now = self._now
        affected = []
        for step in pipeline.steps:
            for visit in await self._orch.storage.find_visits(job.id, step.key, ITEM_OPEN, _ALL):
                change.visits.append(self._cancel_visit(visit, now, "job cancelled"))
                affected.append(visit.item_id)
        return change, affected

    @staticmethod
    def _cancel_visit(visit: VisitRecord, now: float, reason: str) -> VisitChange:
        substeps = {
            key: {**state, "status": U.PENDING.value, "reason": reason}
            for key, state in visit.substeps.items()
            if state["status"] in (U.IN_PROGRESS, U.RETRYING)
        }
        return VisitChange(
            visit.id,
            expect=visit.status,
            status=I.CANCELLED,
            substeps=substeps,
            fields={
                "finished_at": now,
                "reason": reason,
                "lease_owner": None,
                "lease_expires_at": None,
                "next_attempt_at": None,
            },
            reason=reason,
        )

    def process(self, step: str) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            if not pipeline.step(step).runs_work:
                raise Conflict(f"step {step!r} has no handler or sub-steps to run")
            return ChangeSet(job.id, started_steps=(step,), expect_job=_LIVE), []

        return plan

    async def _context(
        self, job: JobRecord, visits: Sequence[VisitRecord]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        ids = [v.item_id for v in visits]
        items = await self._orch.storage.get_items(job.id, ids)
        outputs = await self._orch.storage.item_outputs(job.id, ids)
        return items, outputs

    def pass_items(self, step: str, item_ids: Sequence[str] | None, start_next: bool) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            definition = pipeline.step(step)
            ready = {I.PROCESSED} if definition.runs_work else {I.PROCESSED, I.AVAILABLE}
            visits, items, outputs = await self._visits_in_context(
                job, step, item_ids, _PASSABLE, ready, "pass"
            )
            if not visits:
                raise Conflict(f"no items to pass at step {step!r}")
            change = ChangeSet(job.id, reopen=True, expect_job=_NOT_CANCELLED)
            for visit in visits:
                leave(
                    change,
                    pipeline,
                    items[visit.item_id],
                    definition,
                    job.metadata,
                    outputs[visit.item_id],
                    self._now,
                    from_status=visit.status,
                    reason="passed by a person",
                )
            following = pipeline.next_step(step)
            if start_next and following is not None and following.runs_work:
                change.started_steps = (following.key,)
            return change, [v.item_id for v in visits]

        return plan

    def discard(self, step: str, item_ids: Sequence[str]) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            visits = await self._visits(job, step, item_ids, _DISCARDABLE, (), "discard")
            change = ChangeSet(job.id, expect_job=_NOT_CANCELLED)
            change.visits = [self._cancel_visit(v, self._now, "discarded") for v in visits]
            return change, [v.item_id for v in visits]

        return plan

    def submit(
        self, step: str, payloads: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any]
    ) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            definition = pipeline.step(step)
            if definition.action is None:
                raise Conflict(f"step {step!r} takes no payload")
            if not payloads:
                raise InvalidInput("payloads is empty")
            visits, items, outputs = await self._visits_in_context(
                job, step, list(payloads), {I.AWAITING_INPUT}, (), "submit"
            )
            parsed = await self._validate(job, definition, payloads, defaults, items, outputs)
            change = ChangeSet(job.id, expect_job=_LIVE)
            now = self._now
            for visit in visits:
                payload = parsed[visit.item_id]
                if definition.runs_work:
                    change.visits.append(
                        VisitChange(
                            visit.id,
                            expect=I.AWAITING_INPUT,
                            status=I.AVAILABLE,
                            fields={"input": payload, "reason": None},
                            reason="input submitted",
                        )
                    )
                    continue
                change.visits.append(
                    VisitChange(
                        visit.id,
                        expect=I.AWAITING_INPUT,
                        status=I.PROCESSED,
                        fields={
                            "input": payload,
                            "output": payload,
                            "reason": None,
                            "finished_at": now,
                        },
                        reason="input submitted",
                    )
                )
                if definition.advance == "auto":
                    item_outputs = {**outputs[visit.item_id], step: payload}
                    leave(
                        change,
                        pipeline,
                        items[visit.item_id],
                        definition,
                        job.metadata,
                        item_outputs,
                        now,
                        from_status=I.PROCESSED,
                    )
            return change, [v.item_id for v in visits]

        return plan

    async def _validate(
        self,
        job: JobRecord,
        step: Step,
        payloads: Mapping[str, Mapping[str, Any]],
        defaults: Mapping[str, Any],
        items: Mapping[str, Any],
        outputs: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Any]:
        assert step.action is not None
        action = self._orch.handlers.get_action(step.action)
        problems: dict[str, list[str]] = {}
        parsed: dict[str, Any] = {}
        for item_id, payload in payloads.items():
            if not isinstance(payload, Mapping):
                problems[item_id] = [f"payload must be a mapping, got {type(payload).__name__}"]
                continue
            merged = deep_merge(defaults, payload)
            try:
                check_json(merged, "payload")
                model = action.model.model_validate(merged)
            except InvalidInput as exc:
                problems[item_id] = [str(exc)]
                continue
            except ValidationError as exc:
                problems[item_id] = [
                    f"{'.'.join(str(p) for p in e['loc']) or '<payload>'}: {e['msg']}"
                    for e in exc.errors()
                ]
                continue
            if action.validator is not None:
                item = items[item_id]
                context = ActionContext(
                    job.id,
                    job.metadata,
                    step,
                    item_id,
                    item.key,
                    item.data,
                    outputs.get(item_id, {}),
                )
                try:
                    checked = action.validator(model, context)
                    if inspect.isawaitable(checked):
                        await checked
                except ValueError as exc:
                    problems[item_id] = [str(exc)]
                    continue
            parsed[item_id] = model.model_dump(mode="json")
        if problems:
            raise ActionRejected(step.key, problems)
        return parsed

    def retry(self, step: str, item_ids: Sequence[str] | None) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            visits = await self._visits(job, step, item_ids, {I.FAILED}, {I.FAILED}, "retry")
            if not visits:
                raise Conflict(f"no failed items at step {step!r}")
            change = ChangeSet(job.id, reopen=True, expect_job=_NOT_CANCELLED)
            if pipeline.step(step).runs_work:
                change.started_steps = (step,)
            for visit in visits:
                substeps = {
                    key: {
                        **state,
                        "status": U.PENDING.value,
                        "reason": "retry",
                        "cause": None,
                        "base": state["attempts"],
                        "next_attempt_at": None,
                    }
                    for key, state in visit.substeps.items()
                    if state["status"] in (U.FAILED, U.IN_PROGRESS, U.RETRYING)
                    or (
                        state["status"] == U.SKIPPED
                        and state.get("cause") in ("dependency", "blocked")
                    )
                }
                change.visits.append(
                    VisitChange(
                        visit.id,
                        expect=I.FAILED,
                        status=I.AVAILABLE,
                        substeps=substeps,
                        fields={
                            "retry_base": visit.attempts,
                            "next_attempt_at": None,
                            "finished_at": None,
                            "reason": None,
                        },
                        reason="retried by a person",
                    )
                )
            return change, [v.item_id for v in visits]

        return plan

    def skip(self, step: str, item_id: str, reason: str) -> Plan:
        _check_reason(reason)

        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            visits, items, outputs = await self._visits_in_context(
                job, step, [item_id], _SKIPPABLE, (), "skip"
            )
            (visit,) = visits
            change = ChangeSet(job.id, reopen=True, expect_job=_NOT_CANCELLED)
            now = self._now
            change.visits.append(
                VisitChange(
                    visit.id,
                    expect=visit.status,
                    status=I.SKIPPED,
                    fields={"reason": reason, "finished_at": now, "next_attempt_at": None},
                    reason=reason,
                )
            )
            follow(
                change,
                pipeline,
                items[item_id],
                pipeline.step(step),
                job.metadata,
                outputs[item_id],
                now,
            )
            return change, [item_id]

        return plan

    async def _idle_visit(self, job: JobRecord, step: str, item_id: str) -> VisitRecord:
        (visit,) = await self._visits(
            job,
            step,
            [item_id],
            frozenset(I) - {I.PROCESSING},
            (),
            "change sub-steps of a running item",
        )
        return visit

    def mark(self, step: str, item_id: str, substep: str, status: str, reason: str | None) -> Plan:
        _check_reason(reason)
        try:
            to = U(status)
        except ValueError:
            raise InvalidInput(
                f"status must be completed, failed or skipped, got {status!r}"
            ) from None
        if to not in (U.COMPLETED, U.FAILED, U.SKIPPED):
            raise InvalidInput(f"status must be completed, failed or skipped, got {status!r}")

        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            sub = _substep(pipeline.step(step), substep)
            visit = await self._idle_visit(job, step, item_id)
            if to in SUBSTEP_DONE:
                undone = [
                    d for d in sub.depends_on if visit.substeps[d]["status"] not in SUBSTEP_DONE
                ]
                if undone:
                    raise Conflict(
                        f"cannot mark {substep} {to}: its dependencies "
                        f"{', '.join(undone)} are not completed or skipped"
                    )
            state = {
                **visit.substeps[substep],
                "status": to.value,
                "reason": reason,
                "cause": "manual",
                "finished_at": self._now,
            }
            change = ChangeSet(job.id, expect_job=_NOT_CANCELLED)
            change.visits.append(
                VisitChange(visit.id, expect=visit.status, substeps={substep: state})
            )
            return change, [item_id]

        return plan

    def reset(self, step: str, item_id: str, substep: str, dependents: bool) -> Plan:
        async def plan(job: JobRecord, pipeline: Pipeline) -> tuple[ChangeSet, list[str]]:
            definition = pipeline.step(step)
            _substep(definition, substep)
            visit = await self._idle_visit(job, step, item_id)
            keys = [substep, *(definition.dependents(substep) if dependents else [])]
            states = {
                key: {
                    **visit.substeps[key],
                    "status": U.PENDING.value,
                    "reason": "reset",
                    "cause": None,
                    "error": None,
                    "finished_at": None,
                    "base": visit.substeps[key]["attempts"],
                }
                for key in keys
                if visit.substeps[key]["status"] != U.PENDING
            }
            if not states:
                raise Conflict(f"{substep} and its dependents are already pending")
            change = ChangeSet(job.id, expect_job=_NOT_CANCELLED)
            change.visits.append(VisitChange(visit.id, expect=visit.status, substeps=states))
            return change, [item_id]

        return plan


def _substep(step: Step, key: str) -> Any:
    try:
        return step.substep(key)
    except KeyError:
        raise NotFound(f"sub-step of {step.key}", key) from None
