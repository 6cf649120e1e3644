"""A hypothesis state machine that checks any pipeline on any storage.

Design decision: the machine drives the real orchestrator (through the sync facade,
because hypothesis rules cannot be ``async``) and judges it only by its public reads —
``snapshot``, ``list_items`` and ``events`` — against a small model it keeps itself:
the events replayed into statuses, the attempts seen so far, the handler calls made
after a sub-step completed, which jobs an action may have changed. It binds its own
*scripted* handlers to every handler key of the pipeline, so it decides each
attempt's outcome (succeed, transient or permanent failure, ask a person, skip) and
can therefore predict whether each action it sends must succeed or must be refused
with a typed error that writes nothing.

Before every action it lets the engine settle: nothing is claimable, no handler is
running, and what remains waits for a person or for the fake clock. Settling is
judged from the same public reads, so a storage that does real I/O settles the same
way. Rate limits are removed from the pipeline it runs (they only delay starts, and
would make the schedule depend on arrival order); everything else runs as defined.

Use :func:`pipeline_machine` to get a machine class for a pipeline and a storage
factory; run it with ``run_state_machine_as_test`` or its ``TestCase``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import BaseModel, ConfigDict

from .._definitions import Check, Pipeline, Step
from .._errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermanentError,
    StepflowError,
    TransientError,
)
from .._handlers import HandlerContext, Handlers
from .._models import Event, Item, Snapshot
from .._orchestrator import Orchestrator
from .._states import (
    ITEM_OPEN,
    JOB_REOPEN,
    JOB_TERMINAL,
    SUBSTEP_DONE,
    SUBSTEP_TRANSITIONS,
    ItemStatus,
    JobStatus,
    StepStatus,
    SubStepStatus,
    check_transition,
    derive_job_status,
    derive_step_status,
)
from ..ports import Clock, Storage
from ..storage.memory import MemoryStorage
from ..sync import SyncOrchestrator
from .clock import FakeClock

__all__ = ["OUTCOMES", "PipelineMachine", "pipeline_machine"]

I, J, U = ItemStatus, JobStatus, SubStepStatus
#: What a scripted handler call does: return, raise transient/permanent, ask, skip.
OUTCOMES = ("ok", "transient", "permanent", "ask", "skip")
StorageFactory = Callable[[Clock], Storage]
PayloadFor = Callable[[Step, str], dict[str, Any]]
Unit = tuple[str, str, str]  #: (item key, step key, sub-step key or "")
Expected = type[StepflowError] | None
_PASSABLE = frozenset({I.PROCESSED, I.AVAILABLE, I.FAILED})
_SKIPPABLE = frozenset({I.AVAILABLE, I.RETRYING, I.AWAITING_INPUT, I.FAILED})
_DISCARDABLE = ITEM_OPEN | {I.FAILED}
_REOPENERS = frozenset({"retry", "pass", "skip"})
_LEAVES: tuple[Any, ...] = (True, False, None, 0, 1, "x", "")
_SETTLE_SECONDS = 30.0


class _Collect(logging.Handler):
    """Keeps the error records stepflow logs (the engine logs and survives its own bugs)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class AnyPayload(BaseModel):
    """The permissive action model bound when the host gives none: any JSON object."""

    model_config = ConfigDict(extra="allow")


# -- the script: scripted outcomes and a log of handler calls -------------------------


class Script:
    """Outcomes queued per (item, step, sub-step), and how often each was called.

    Handlers run on the orchestrator's event loop thread while the machine writes from
    the test thread, so every access holds a lock. An empty queue means "succeed".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[Unit, list[str]] = {}
        self.calls: Counter[Unit] = Counter()
        self.outputs: dict[str, dict[str, Any]] = {}  #: by item key

    def plan(self, unit: Unit, outcomes: Iterable[str]) -> None:
        with self._lock:
            self._plans[unit] = list(outcomes)

    def take(self, unit: Unit) -> str:
        with self._lock:
            self.calls[unit] += 1
            queue = self._plans.get(unit)
            return queue.pop(0) if queue else "ok"

    def count(self, unit: Unit) -> int:
        with self._lock:
            return self.calls[unit]

    def handler(self, key: str) -> Callable[[HandlerContext], Any]:
        async def scripted(ctx: HandlerContext) -> Any:
            sub = ctx.substep.key if ctx.substep is not None else ""
            outcome = self.take((ctx.item_key, ctx.step.key, sub))
            if outcome == "transient":
                raise TransientError(f"scripted transient failure of {key}")
            if outcome == "permanent":
                raise PermanentError(f"scripted permanent failure of {key}")
            if outcome == "ask":
                ctx.ask_person(f"scripted question from {key}")
            if outcome == "skip":
                ctx.skip(f"scripted skip by {key}")
            return {"by": key, "attempt": ctx.attempt, **self.outputs.get(ctx.item_key, {})}

        return scripted


# -- shaping data so that the pipeline's conditions go both ways ----------------------


def _checks(pipeline: Pipeline) -> list[Check]:
    found = [c for s in pipeline.steps for c in s.run_if]
    found += [c for s in pipeline.steps for sub in s.substeps for c in sub.run_if]
    return found


def _shape(paths: Iterable[Sequence[str]], leaves: Sequence[Any]) -> st.SearchStrategy[Any]:
    """Nested dicts in which each path is absent or holds one of ``leaves``."""
    tree: dict[str, Any] = {}
    for parts in paths:
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if parts:
            node.setdefault(parts[-1], None)
    return _tree(tree, st.sampled_from(list(leaves)))


def _tree(tree: Mapping[str, Any], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    fields = {k: _tree(v, leaf) if isinstance(v, dict) and v else leaf for k, v in tree.items()}
    return st.fixed_dictionaries({}, optional=fields)


@dataclass(frozen=True)
class _Shapes:
    item: st.SearchStrategy[Any]
    output: st.SearchStrategy[Any]
    payload: st.SearchStrategy[Any]
    metadata: st.SearchStrategy[Any]


def _shapes(pipeline: Pipeline) -> _Shapes:
    checks = _checks(pipeline)
    leaves = list(_LEAVES) + [c.value for c in checks if c.value not in _LEAVES]
    by_root: dict[str, list[list[str]]] = {}
    for check in checks:
        parts = check.path.split(".")
        skip = 2 if parts[0] in ("outputs", "substeps") else 1
        by_root.setdefault(parts[0], []).append(parts[skip:])

    def shape(*roots: str) -> st.SearchStrategy[Any]:
        return _shape([p for r in roots for p in by_root.get(r, [])], leaves)

    return _Shapes(shape("item"), shape("outputs", "substeps"), shape("input"), shape("job"))


def _runnable(pipeline: Pipeline) -> Pipeline:
    """The pipeline without rate limits (the only change the machine makes)."""
    data = pipeline.to_dict()
    for step in data["steps"]:
        step.pop("rate_limit", None)
        for sub in step.get("substeps", ()):
            sub.pop("rate_limit", None)
    return Pipeline.load(data)


# -- the model ----------------------------------------------------------------------------


@dataclass
class _JobModel:
    id: str
    keys: list[str]
    idempotency_key: str | None
    seq: int = 0
    status: JobStatus = J.DRAFT
    snapshot: Snapshot | None = None
    #: The latest listing: step -> item id -> item.
    items: dict[str, dict[str, Item]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  #: item id -> item key
    #: Statuses replayed from the events.
    item_status: dict[tuple[str, str], ItemStatus] = field(default_factory=dict)
    sub_status: dict[tuple[str, str, str], SubStepStatus] = field(default_factory=dict)
    step_status: dict[str, StepStatus] = field(default_factory=dict)
    job_status: JobStatus = J.DRAFT
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    sub_attempts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: Sub-steps seen completed, with the handler calls made until then.
    completed: dict[Unit, int] = field(default_factory=dict)

    def status_of(self, step: str, item_id: str) -> ItemStatus | None:
        item = self.items.get(step, {}).get(item_id)
        return item.status if item is not None else None

    def at(self, step: str, statuses: Iterable[ItemStatus]) -> list[str]:
        wanted = set(statuses)
        return [i for i, item in self.items.get(step, {}).items() if item.status in wanted]


@dataclass(frozen=True)
class _Sent:
    """A successful action, kept so that it can be sent again with its action id."""

    job_id: str
    verb: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    affected: tuple[str, ...]


class PipelineMachine(RuleBasedStateMachine):
    """Random sequences of jobs, engine runs, actions and clock moves, checked each step.

    Subclasses made by :func:`pipeline_machine` set :attr:`pipeline`,
    :attr:`storage_factory`, :attr:`payload_for` and :attr:`action_models`.
    """

    pipeline: ClassVar[Pipeline]
    storage_factory: ClassVar[StorageFactory | None] = None
    payload_for: ClassVar[PayloadFor | None] = None
    action_models: ClassVar[Mapping[str, type[BaseModel]]] = {}
    max_jobs: ClassVar[int] = 3
    max_items: ClassVar[int] = 5

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.script = Script()
        self.logged = _Collect()
        logging.getLogger("stepflow").addHandler(self.logged)
        self.shapes = _shapes(self.pipeline)
        handlers = Handlers()
        for key in self.pipeline.handler_keys():
            handlers.add(key, self.script.handler(key))
        for key in self.pipeline.action_keys():
            handlers.action(key, self.action_models.get(key, AnyPayload))
        factory = type(self).storage_factory
        storage = factory(self.clock) if factory is not None else MemoryStorage(self.clock)
        self.sync = SyncOrchestrator(
            storage,
            handlers=handlers,
            pipelines=[self.pipeline],
            clock=self.clock,
            lease_seconds=1e9,  # leases never expire: the fake clock jumps
        )
        self.sync.open()
        self.orch: Orchestrator = self.sync.orchestrator
        self.jobs: dict[str, _JobModel] = {}
        self.sent: list[_Sent] = []
        self.created = 0
        #: Tells this run's idempotency keys from those of earlier runs on a shared database.
        self.run_id = uuid.uuid4().hex[:8]
        # What the rule that just ran may have changed (checked by the invariant).
        self.changed: set[str] = set()
        self.verbs: dict[str, str] = {}
        self.touched: set[tuple[str, str, str]] = set()  # (job, item id, step)

    def teardown(self) -> None:
        try:
            self.sync.close()
        finally:
            logging.getLogger("stepflow").removeHandler(self.logged)

    # -- helpers ------------------------------------------------------------------

    def _job(self, data: st.DataObject, prefer: Iterable[JobStatus] = ()) -> _JobModel:
        """A job, in creation order; mostly one in a ``prefer`` status if there is one."""
        jobs = list(self.jobs.values())
        wanted = set(prefer)
        fitting = [j for j in jobs if j.status in wanted]
        if fitting and _mostly(data):
            jobs = fitting
        return data.draw(st.sampled_from(jobs))

    def _step(
        self, data: st.DataObject, steps: Sequence[Step] | None = None, prefer: Sequence[Step] = ()
    ) -> Step:
        """One of ``steps`` (default: all); mostly one of ``prefer`` if there is one."""
        if prefer and _mostly(data):
            steps = prefer
        return data.draw(st.sampled_from(list(steps or self.pipeline.steps)))

    def _ids(
        self,
        data: st.DataObject,
        job: _JobModel,
        step: str,
        prefer: Iterable[ItemStatus] = (),
    ) -> list[str]:
        """A few item ids at ``step``, mostly in a ``prefer`` status; rarely unknown ones."""
        here = list(job.items.get(step, {}))  # listing order: stable across runs
        anywhere = sorted(job.ids, key=job.ids.__getitem__)  # by item key, not random id
        fitting = job.at(step, prefer)
        pool = fitting if fitting and _mostly(data) else here or anywhere
        choice = st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)
        picked = data.draw(choice)
        if data.draw(st.integers(0, 9)) == 0:
            picked.append("no-such-item")
        elif data.draw(st.integers(0, 9)) == 0 and anywhere:
            picked.append(data.draw(st.sampled_from(anywhere)))
        return list(dict.fromkeys(picked))

    def _steps_with(self, job: _JobModel, statuses: Iterable[ItemStatus]) -> list[Step]:
        """The steps where ``job`` has items in ``statuses``."""
        wanted = set(statuses)
        return [s for s in self.pipeline.steps if job.at(s.key, wanted)]

    def _plan_outcomes(self, data: st.DataObject, key: str, steps: Iterable[Step]) -> None:
        outcomes = st.lists(st.sampled_from(OUTCOMES), max_size=3)
        for step in steps:
            units = [s.key for s in step.substeps] if step.substeps else [""]
            if not step.runs_work:
                continue
            for sub in units:
                self.script.plan((key, step.key, sub), data.draw(outcomes))

    def _send(
        self, job: _JobModel | None, verb: str, expected: Expected, *args: Any, **kwargs: Any
    ) -> None:
        """Send an action; check it succeeds or raises ``expected`` writing nothing."""
        job_id = job.id if job is not None else "no-such-job"
        action_id = uuid.uuid4().hex
        method = getattr(self.sync, verb)
        try:
            result = method(job_id, *args, action_id=action_id, **kwargs)
        except StepflowError as exc:
            if expected is None:
                raise AssertionError(f"{verb}{args} on {job_id} raised {exc!r}") from exc
            assert isinstance(exc, expected), f"{verb}{args}: expected {expected}, got {exc!r}"
            return
        assert expected is None, f"{verb}{args} on {job_id} succeeded; expected {expected}"
        assert job is not None
        assert not result.duplicate
        self.changed.add(job.id)
        self.verbs[job.id] = result.action
        self.sent.append(
            _Sent(job.id, verb, args, {**kwargs, "action_id": action_id}, tuple(result.affected))
        )

    @staticmethod
    def _job_error(job: _JobModel, allowed: Iterable[JobStatus]) -> Expected:
        return None if job.status in set(allowed) else Conflict

    @staticmethod
    def _item_error(
        job: _JobModel, step: str, ids: Sequence[str], allowed: Iterable[ItemStatus]
    ) -> Expected:
        statuses = [job.status_of(step, i) for i in ids]
        if any(s is None for s in statuses):
            return NotFound
        wanted = set(allowed)
        return None if all(s in wanted for s in statuses) else Conflict

    # -- rules: jobs ----------------------------------------------------------------

    @precondition(lambda self: len(self.jobs) < self.max_jobs)
    @rule(data=st.data())
    def add_job(self, data: st.DataObject) -> None:
        """Create a job with 1-5 items whose outcomes are scripted up front."""
        again = [j for j in self.jobs.values() if j.idempotency_key]
        if again and data.draw(st.integers(0, 5)) == 0:
            job = data.draw(st.sampled_from(again))
            items = [{"key": k} for k in job.keys]
            made = self.sync.create_job(
                self.pipeline.name, items, idempotency_key=job.idempotency_key
            )
            assert made.id == job.id, "an idempotency key created a second job"
            return
        self.created += 1
        count = data.draw(st.integers(1, self.max_items))
        keys = [f"j{self.created}-i{n}" for n in range(count)]
        items = []
        for key in keys:
            items.append({"key": key, "data": data.draw(self.shapes.item)})
            self.script.outputs[key] = data.draw(self.shapes.output)
            self._plan_outcomes(data, key, self.pipeline.steps)
        idem = f"idem-{self.run_id}-{self.created}" if data.draw(st.booleans()) else None
        made = self.sync.create_job(
            self.pipeline.name,
            items,
            auto_process=data.draw(st.booleans()),
            metadata=data.draw(self.shapes.metadata),
            idempotency_key=idem,
        )
        self.jobs[made.id] = _JobModel(made.id, keys, idem)
        self.changed.add(made.id)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def wait_for_job(self, data: st.DataObject) -> None:
        """``wait`` returns at once when nothing runs, and times out while retries wait."""
        job = self._job(data)
        snap = job.snapshot
        assert snap is not None
        busy = any(s.status in (StepStatus.IN_PROGRESS, StepStatus.RETRYING) for s in snap.steps)
        if busy and snap.job.status not in (*JOB_TERMINAL, J.PAUSED):
            try:
                self.sync.wait(job.id, timeout=0.02)
            except TimeoutError:
                return
            raise AssertionError("wait returned while items still wait for the clock")
        waited = self.sync.wait(job.id, timeout=10)
        assert waited.version == snap.version, "wait saw changes in a settled job"

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), seconds=st.sampled_from([None, None, 0.25, 1.0, 5.0]))
    def advance_clock(self, data: st.DataObject, seconds: float | None) -> None:
        """Move the fake clock: to the next retry time, or by a fixed amount."""
        now = self.clock.now()
        due = [
            t
            for job in self.jobs.values()
            for items in job.items.values()
            for item in items.values()
            for t in [item.next_attempt_at]
            + [s.get("next_attempt_at") for s in item.substeps.values()]
            if t is not None and t > now
        ]
        step = seconds if seconds is not None or not due else min(due) - now
        self.sync.portal.call(self.clock.advance, step or 0.1)
        self.changed.update(j.id for j in self.jobs.values() if j.status not in JOB_TERMINAL)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def pause_job(self, data: st.DataObject) -> None:
        """Pause; refused unless the job is pending or in progress."""
        job = self._job(data, (J.PENDING, J.IN_PROGRESS))
        self._send(job, "pause_job", self._job_error(job, (J.PENDING, J.IN_PROGRESS)))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def resume_job(self, data: st.DataObject) -> None:
        """Resume; refused unless the job is paused."""
        job = self._job(data, (J.PAUSED,))
        self._send(job, "resume_job", self._job_error(job, (J.PAUSED,)))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        """Cancel; refused once the job is final."""
        job = self._job(data, _live())
        expected = None if job.status not in JOB_TERMINAL else Conflict
        self._send(job, "cancel_job", expected)

    # -- rules: steps and items -----------------------------------------------------------

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def process_step(self, data: st.DataObject) -> None:
        """Start a step by hand; refused for a step without work or a final job."""
        job, step = self._job(data), self._step(data)
        expected = Conflict if not step.runs_work else self._job_error(job, _live())
        self._send(job, "process_step", expected, step.key)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def pass_items(self, data: st.DataObject) -> None:
        """Pass items on; only processed, available or failed items can go."""
        job, step = self._job(data), self._step(data)
        if data.draw(st.integers(0, 4)) == 0:
            ids: list[str] | None = None
            # Without ids, the processed items go (and available ones at a step with no
            # work); with none of those there is nothing to pass.
            ready = {I.PROCESSED} if step.runs_work else {I.PROCESSED, I.AVAILABLE}
            waiting = [i for i, s in job.items.get(step.key, {}).items() if s.status in ready]
            expected: Expected = None if waiting else Conflict
        else:
            ids = self._ids(data, job, step.key, _PASSABLE)
            expected = self._item_error(job, step.key, ids, _PASSABLE)
        if expected is None and job.status is J.CANCELLED:
            expected = Conflict
        start_next = data.draw(st.booleans())
        self._send(job, "pass_items", expected, step.key, ids, start_next=start_next)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        """Submit payloads; only for items awaiting input at a step with an action."""
        job = self._job(data)
        step = self._step(data, prefer=self._steps_with(job, {I.AWAITING_INPUT}))
        ids = self._ids(data, job, step.key, {I.AWAITING_INPUT})
        payloads: dict[str, Any] = {}
        for item_id in ids:
            key = job.ids.get(item_id, item_id)
            chosen = type(self).payload_for
            payloads[item_id] = (
                chosen(step, key) if chosen is not None else data.draw(self.shapes.payload)
            )
        broken = data.draw(st.integers(0, 9)) == 0
        if broken:
            payloads[ids[0]] = ["not", "a", "mapping"]
        expected: Expected
        if step.action is None:
            expected = Conflict
        else:
            expected = self._item_error(job, step.key, ids, {I.AWAITING_INPUT})
            if expected is None and broken:
                expected = InvalidInput
            if expected is None and job.status in JOB_TERMINAL:
                expected = Conflict
        if expected is None:  # before sending: the engine may run them at once
            for item_id in ids:
                self._plan_outcomes(data, job.ids[item_id], [step])
        self._send(job, "submit", expected, step.key, payloads)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def retry_items(self, data: st.DataObject) -> None:
        """Retry failed items (with fresh scripted outcomes); refused for other items."""
        job = self._job(data)
        step = self._step(data, prefer=self._steps_with(job, {I.FAILED}))
        ids: list[str] | None
        if data.draw(st.integers(0, 3)) == 0:
            ids = None
            expected: Expected = None if job.at(step.key, {I.FAILED}) else Conflict
        else:
            ids = self._ids(data, job, step.key, {I.FAILED})
            expected = self._item_error(job, step.key, ids, {I.FAILED})
        if expected is None and job.status is J.CANCELLED:
            expected = Conflict
        targets = ids if ids is not None else job.at(step.key, {I.FAILED})
        if expected is None:
            for item_id in targets:
                self._plan_outcomes(data, job.ids[item_id], [step])
        self._send(job, "retry_items", expected, step.key, ids)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def skip_item(self, data: st.DataObject) -> None:
        """Skip an item at a step; only available, retrying, awaiting or failed ones."""
        job = self._job(data)
        step = self._step(data, prefer=self._steps_with(job, _SKIPPABLE))
        (item_id,) = self._ids(data, job, step.key, _SKIPPABLE)[:1]
        expected = self._item_error(job, step.key, [item_id], _SKIPPABLE)
        if expected is None and job.status is J.CANCELLED:
            expected = Conflict
        self._send(job, "skip_item", expected, step.key, item_id, reason="machine skip")

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def discard_items(self, data: st.DataObject) -> None:
        """Discard items; only open or failed ones, never in a cancelled job."""
        job, step = self._job(data), self._step(data)
        ids = self._ids(data, job, step.key, _DISCARDABLE)
        expected = self._item_error(job, step.key, ids, _DISCARDABLE)
        if expected is None and job.status is J.CANCELLED:
            expected = Conflict
        self._send(job, "discard_items", expected, step.key, ids)

    # -- rules: sub-steps ---------------------------------------------------------------

    def _substep_target(self, data: st.DataObject) -> tuple[_JobModel, Step, str, str]:
        job = self._job(data)
        with_substeps = [s for s in self.pipeline.steps if s.substeps]
        step = self._step(data, with_substeps, prefer=with_substeps)
        (item_id,) = self._ids(data, job, step.key, frozenset(I) - {I.PROCESSING})[:1]
        sub = data.draw(st.sampled_from([s.key for s in step.substeps] + ["no-such-substep"]))
        return job, step, item_id, sub

    def _substep_error(self, job: _JobModel, step: Step, item_id: str, sub: str) -> Expected:
        if sub not in {s.key for s in step.substeps}:
            return NotFound
        status = job.status_of(step.key, item_id)
        if status is None:
            return NotFound
        if status is I.PROCESSING:
            return Conflict
        return None

    @precondition(lambda self: self.jobs and any(s.substeps for s in self.pipeline.steps))
    @rule(data=st.data(), to=st.sampled_from(["completed", "failed", "skipped"]))
    def mark_substep(self, data: st.DataObject, to: str) -> None:
        """Mark a sub-step by hand; done marks need done dependencies."""
        job, step, item_id, sub = self._substep_target(data)
        expected = self._substep_error(job, step, item_id, sub)
        states = job.items[step.key][item_id].substeps if expected is None else {}
        if expected is None and sub not in states:
            expected = Conflict  # the item skipped this step: it has no sub-steps here
        if expected is None:
            target, current = U(to), U(states[sub]["status"])
            deps = step.substep(sub).depends_on
            undone = [d for d in deps if U(states[d]["status"]) not in SUBSTEP_DONE]
            refused = (
                (target in SUBSTEP_DONE and undone)
                or (current is not target and target not in SUBSTEP_TRANSITIONS[current])
                or job.status is J.CANCELLED
            )
            expected = Conflict if refused else None
        self._send(job, "mark_substep", expected, step.key, item_id, sub, to)
        if expected is None:
            self.touched.add((job.id, item_id, step.key))

    @precondition(lambda self: self.jobs and any(s.substeps for s in self.pipeline.steps))
    @rule(data=st.data())
    def reset_substep(self, data: st.DataObject) -> None:
        """Reset a sub-step and its dependents; refused when all are already pending."""
        job, step, item_id, sub = self._substep_target(data)
        expected = self._substep_error(job, step, item_id, sub)
        states = job.items[step.key][item_id].substeps if expected is None else {}
        if expected is None and sub not in states:
            expected = Conflict  # the item skipped this step: it has no sub-steps here
        if expected is None:
            keys = [sub, *step.dependents(sub)]
            if all(states[k]["status"] == U.PENDING for k in keys) or job.status is J.CANCELLED:
                expected = Conflict
        self._send(job, "reset_substep", expected, step.key, item_id, sub)
        if expected is None:
            self.touched.add((job.id, item_id, step.key))

    # -- rules: repeats and errors ----------------------------------------------------

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """Send a previous action again with its action id: it must change nothing."""
        sent = data.draw(st.sampled_from(self.sent))
        result = getattr(self.sync, sent.verb)(sent.job_id, *sent.args, **sent.kwargs)
        assert result.duplicate, f"{sent.verb} with a used action id was applied again"
        assert tuple(result.affected) == sent.affected

    @precondition(lambda self: self.jobs)
    @rule(verb=st.sampled_from(["pause_job", "resume_job", "cancel_job"]))
    def act_on_unknown_job(self, verb: str) -> None:
        """An action on a job that does not exist is NotFound."""
        self._send(None, verb, NotFound)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def act_on_unknown_step(self, data: st.DataObject) -> None:
        """An action naming a step the pipeline does not have is NotFound."""
        self._send(self._job(data), "process_step", NotFound, "no-such-step")

    # -- settling -----------------------------------------------------------------------

    async def _quiet(self, job_id: str) -> bool:
        """Nothing left to run until a person acts or the fake clock moves."""
        orch = self.orch
        snap = await orch.snapshot(job_id)
        active = snap.job.status in (J.PENDING, J.IN_PROGRESS)
        now = self.clock.now()
        for view, step in zip(snap.steps, self.pipeline.steps, strict=True):
            counts = view.counts
            running = counts.get(I.PROCESSING, 0)
            if active and view.started and counts.get(I.AVAILABLE) and running < step.concurrency:
                return False
            if active and counts.get(I.RETRYING):
                page = await orch.list_items(job_id, step.key, status=I.RETRYING, limit=1000)
                if any((i.next_attempt_at or 0) <= now for i in page.items):
                    return False
            if running:
                page = await orch.list_items(job_id, step.key, status=I.PROCESSING, limit=1000)
                for item in page.items:
                    subs = list(item.substeps.values())
                    if any(s["status"] == U.IN_PROGRESS for s in subs):
                        return False
                    if not any(
                        s["status"] == U.RETRYING and (s.get("next_attempt_at") or 0) > now
                        for s in subs
                    ):
                        return False
        return True

    async def _settle(self) -> None:
        ids = sorted(self.jobs)
        deadline = time.monotonic() + _SETTLE_SECONDS
        last: list[int] | None = None
        stable = spins = 0
        while True:
            for _ in range(4):
                await anyio.lowlevel.checkpoint()
            versions = [(await self.orch.get_job(j)).version_seq for j in ids]
            if versions == last and all([await self._quiet(j) for j in ids]):
                stable += 1
                if stable >= 2:
                    return
            else:
                stable = 0
            last = versions
            spins += 1
            if spins > 50:  # a storage doing real I/O: give its threads time
                await anyio.sleep(0.001)
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine did not settle in {_SETTLE_SECONDS} s")

    # -- the invariants ----------------------------------------------------------------

    @invariant()
    def everything_holds(self) -> None:
        """Settle, then check every job against DESIGN §4's invariants."""
        if self.jobs:
            self.sync.portal.call(self._settle)
        for job in self.jobs.values():
            self._check_job(job)
        if self.logged.records:
            formatter = logging.Formatter()
            first = self.logged.records[0]
            raise AssertionError(f"stepflow logged an error: {formatter.format(first)}")
        self.changed.clear()
        self.verbs.clear()
        self.touched.clear()

    def _check_job(self, job: _JobModel) -> None:
        sync = self.sync
        before = job.status
        snap = sync.snapshot(job.id)
        events: list[Event] = []
        while True:
            batch = sync.events(job.id, after=job.seq + len(events), limit=1000)
            if not batch:
                break
            events.extend(batch)
        # Gapless, increasing sequence numbers; the snapshot's version is the last one.
        seqs = [e.seq for e in events]
        assert seqs == list(range(job.seq + 1, job.seq + 1 + len(seqs))), f"gap in {seqs}"
        if events and job.id not in self.changed:
            shown = [(e.type, e.data) for e in events[:5]]
            raise AssertionError(f"job {job.id} changed when nothing acted on it: {shown}")
        if before is J.CANCELLED:
            assert not events, f"a cancelled job changed: {[e.type for e in events]}"
        job.seq += len(events)
        assert snap.version == job.seq, f"snapshot version {snap.version} != last seq {job.seq}"
        verb = self.verbs.get(job.id)
        for event in events:
            self._replay(job, event.type, event.step, event.item_id, event.data, verb)
        # The job changes from a final status only by an explicit retry, pass or skip.
        status = snap.job.status
        if before in JOB_TERMINAL and status is not before:
            assert before is not J.CANCELLED and verb in _REOPENERS, (
                f"final job went {before} -> {status} after {verb}"
            )
        job.status = status
        job.snapshot = snap
        assert job.job_status is status, f"events say {job.job_status}, snapshot {status}"
        self._check_items(job, snap)

    def _replay(
        self,
        job: _JobModel,
        kind: str,
        step: str | None,
        item_id: str | None,
        data: Mapping[str, Any],
        verb: str | None,
    ) -> None:
        """Apply one event to the replayed statuses, checking it against the tables."""
        if kind == "job.status":
            from_, to = J(data["from"]), J(data["to"])
            check_transition("job", from_, to, explicit=True)
            assert from_ is job.job_status, f"job event from {from_}, was {job.job_status}"
            if (from_, to) in JOB_REOPEN:
                assert verb in _REOPENERS, f"job reopened {from_} -> {to} by {verb}"
            job.job_status = to
        elif kind == "step.status":
            assert step is not None
            step_from, step_to = StepStatus(data["from"]), StepStatus(data["to"])
            check_transition("step", step_from, step_to)
            old = job.step_status.get(step, StepStatus.PENDING)
            assert step_from is old, f"step {step} event from {step_from}, was {old}"
            job.step_status[step] = step_to
        elif kind == "item.status":
            assert step is not None and item_id is not None
            item_to = I(data["to"])
            current = job.item_status.get((item_id, step))
            if data["from"] is None:
                assert current is None, f"{item_id} arrived twice at {step}"
            else:
                check_transition("item", data["from"], item_to)
                assert I(data["from"]) is current, f"{item_id}@{step} from {data['from']}"
            job.item_status[(item_id, step)] = item_to
        elif kind == "substep.status":
            assert step is not None and item_id is not None
            key = (item_id, step, str(data["substep"]))
            sub_from, sub_to = U(data["from"]), U(data["to"])
            check_transition("substep", sub_from, sub_to)
            old_sub = job.sub_status.get(key, U.PENDING)
            assert sub_from is old_sub, f"{key} event from {sub_from}, was {old_sub}"
            job.sub_status[key] = sub_to

    def _check_items(self, job: _JobModel, snap: Snapshot) -> None:
        sync = self.sync
        open_at: Counter[str] = Counter()
        per_step: list[Counter[ItemStatus]] = []
        upstream_open = False
        for view, step in zip(snap.steps, self.pipeline.steps, strict=True):
            listed: dict[str, Item] = {}
            cursor: int | None = None
            while True:
                page = sync.list_items(job.id, step.key, cursor=cursor, limit=7)
                for item in page.items:
                    assert item.id not in listed, f"{item.id} listed twice at {step.key}"
                    listed[item.id] = item
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            job.items[step.key] = listed
            counts: Counter[ItemStatus] = Counter(i.status for i in listed.values())
            per_step.append(counts)
            shown = {s: n for s, n in view.counts.items() if n}
            assert shown == dict(counts), f"{step.key}: counts {shown} but items {dict(counts)}"
            assert view.received == len(listed)
            derived = derive_step_status(counts, started=view.started, upstream_open=upstream_open)
            assert view.status is derived, f"{step.key} is {view.status}, derived {derived}"
            assert job.step_status.get(step.key, StepStatus.PENDING) is view.status
            upstream_open = upstream_open or any(counts[s] for s in ITEM_OPEN)
            for item in listed.values():
                self._check_item(job, step, item)
                if item.status in ITEM_OPEN:
                    open_at[item.id] += 1
        twice = [i for i, n in open_at.items() if n > 1]
        assert not twice, f"items open at two steps: {twice}"
        derived_job = derive_job_status(snap.job.status, per_step)
        assert derived_job is snap.job.status, f"job is {snap.job.status}, derived {derived_job}"

    def _check_item(self, job: _JobModel, step: Step, item: Item) -> None:
        job.ids[item.id] = item.key
        replayed = job.item_status.get((item.id, step.key))
        assert replayed is item.status, f"{item.id}@{step.key} is {item.status}, events {replayed}"
        seen = job.attempts.get((item.id, step.key), 0)
        assert item.attempts >= seen, f"attempts of {item.id}@{step.key} went down"
        job.attempts[(item.id, step.key)] = item.attempts
        touched = (job.id, item.id, step.key) in self.touched
        for sub, state in item.substeps.items():
            key = (item.id, step.key, sub)
            status = U(state["status"])
            assert job.sub_status.get(key, U.PENDING) is status, f"{key} is {status} by events"
            attempts = int(state.get("attempts") or 0)
            assert attempts >= job.sub_attempts.get(key, 0), f"attempts of {key} went down"
            job.sub_attempts[key] = attempts
            unit = (item.key, step.key, sub)
            calls = self.script.count(unit)
            if touched:
                job.completed.pop(unit, None)
            if unit in job.completed:
                assert status is U.COMPLETED, f"completed sub-step {unit} became {status}"
                assert calls == job.completed[unit], f"completed sub-step {unit} ran again"
            elif status is U.COMPLETED:
                job.completed[unit] = calls


def _mostly(data: st.DataObject) -> bool:
    """True three times in four."""
    return data.draw(st.integers(0, 3)) > 0


def _live() -> frozenset[JobStatus]:
    return frozenset(JobStatus) - JOB_TERMINAL


def pipeline_machine(
    pipeline: Pipeline,
    storage_factory: StorageFactory | None = None,
    *,
    payload_for: PayloadFor | None = None,
    action_models: Mapping[str, type[BaseModel]] | None = None,
    max_jobs: int = 3,
    max_items: int = 5,
) -> type[PipelineMachine]:
    """A state machine class that checks ``pipeline`` on storages from ``storage_factory``.

    ``storage_factory`` gets the machine's fake clock and returns a fresh, unstarted
    storage (default: :class:`~stepflow.testing.MemoryStorage`). ``payload_for(step,
    item_key)`` builds a valid payload for ``step``'s action model; ``action_models``
    binds action keys to models (default: a model that accepts any object). Every
    handler key is bound to the machine's scripted handlers.
    """
    runnable = _runnable(pipeline)
    attrs: dict[str, Any] = {
        "pipeline": runnable,
        "storage_factory": staticmethod(storage_factory) if storage_factory else None,
        "payload_for": staticmethod(payload_for) if payload_for else None,
        "action_models": dict(action_models or {}),
        "max_jobs": max_jobs,
        "max_items": max_items,
        "__doc__": f"Checks pipeline {pipeline.name!r} against DESIGN §4's invariants.",
    }
    return type(f"PipelineMachine_{pipeline.name.replace('-', '_')}", (PipelineMachine,), attrs)
