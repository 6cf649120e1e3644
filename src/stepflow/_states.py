"""Statuses, the transition tables, and the pure functions that derive statuses.

Design decision: every status and every allowed change is declared here once, as data
(``JOB_TRANSITIONS``, ``STEP_TRANSITIONS``, ``ITEM_TRANSITIONS``,
``SUBSTEP_TRANSITIONS``), and every change anywhere in stepflow goes through
:func:`check_transition`, which raises :class:`InvalidTransition` for anything not in
the table. Step and job statuses are never set by hand: :func:`derive_step_status` and
:func:`derive_job_status` compute them from the item counts, so they cannot drift from
the items. Nothing in this module does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

from ._errors import InvalidTransition

__all__ = [
    "ITEM_OPEN",
    "ITEM_SETTLED",
    "ITEM_TRANSITIONS",
    "JOB_TERMINAL",
    "JOB_TRANSITIONS",
    "STEP_BUSY",
    "STEP_OPEN",
    "STEP_TRANSITIONS",
    "SUBSTEP_DONE",
    "SUBSTEP_TRANSITIONS",
    "ItemStatus",
    "JobStatus",
    "StepStatus",
    "SubStepStatus",
    "check_transition",
    "derive_job_status",
    "derive_step_status",
    "has_open",
    "is_settled",
]


class JobStatus(StrEnum):
    """Where a job is in its life."""

    DRAFT = "draft"  #: created, not started
    PENDING = "pending"  #: started, no item has begun its first step yet
    IN_PROGRESS = "in_progress"  #: work is running or waiting for a person
    PAUSED = "paused"  #: no new work is claimed until resumed
    COMPLETED = "completed"  #: every item settled and at least one finished the last step
    FAILED = "failed"  #: every item settled and none finished the last step
    CANCELLED = "cancelled"  #: stopped by a person; final


class StepStatus(StrEnum):
    """A step's status within one job, derived from the items at that step."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    ACTION_REQUIRED = "action_required"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class ItemStatus(StrEnum):
    """An item's status at one step (one *visit*)."""

    AVAILABLE = "available"  #: waiting to be processed
    PROCESSING = "processing"  #: a handler holds it under a lease
    RETRYING = "retrying"  #: failed, waiting for its next attempt time
    AWAITING_INPUT = "awaiting_input"  #: waiting for a person's payload
    PROCESSED = "processed"  #: done here, waiting for a person to pass it on
    PASSED = "passed"  #: moved on to the next step (or finished the last one)
    FAILED = "failed"  #: failed for good here; a person may retry, pass or discard it
    SKIPPED = "skipped"  #: this step did nothing for it (with a reason); it moved on
    CANCELLED = "cancelled"  #: discarded, or its job was cancelled


class SubStepStatus(StrEnum):
    """A sub-step's status within one item's visit to a step."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


J, S, I, U = JobStatus, StepStatus, ItemStatus, SubStepStatus

#: Allowed job changes. Reopening a finished job needs an explicit action (``REOPEN``).
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    J.DRAFT: frozenset({J.PENDING, J.CANCELLED}),
    J.PENDING: frozenset({J.IN_PROGRESS, J.PAUSED, J.CANCELLED, J.COMPLETED, J.FAILED}),
    J.IN_PROGRESS: frozenset({J.COMPLETED, J.FAILED, J.PAUSED, J.CANCELLED}),
    J.PAUSED: frozenset({J.PENDING, J.IN_PROGRESS, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.COMPLETED: frozenset({J.IN_PROGRESS}),
    J.FAILED: frozenset({J.IN_PROGRESS, J.COMPLETED}),
    J.CANCELLED: frozenset(),
}
#: Job changes allowed only as the result of a person's explicit retry or pass.
JOB_REOPEN: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {(J.COMPLETED, J.IN_PROGRESS), (J.FAILED, J.IN_PROGRESS), (J.FAILED, J.COMPLETED)}
)
JOB_TERMINAL: frozenset[JobStatus] = frozenset({J.COMPLETED, J.FAILED, J.CANCELLED})

_ALL_STEP = frozenset(StepStatus)
#: Derived step changes: anything may follow anything (a completed step re-opens when
#: items arrive), except that ``pending`` is only re-entered from ``skipped`` (an
#: upstream retry brought the chance of new items back).
STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    status: (_ALL_STEP - {S.PENDING, status}) | ({S.PENDING} if status is S.SKIPPED else set())
    for status in StepStatus
}

#: Allowed changes of an item at a step.
ITEM_TRANSITIONS: Mapping[ItemStatus, frozenset[ItemStatus]] = {
    I.AVAILABLE: frozenset({I.PROCESSING, I.AWAITING_INPUT, I.PASSED, I.SKIPPED, I.CANCELLED}),
    I.PROCESSING: frozenset(
        {
            I.PROCESSED,
            I.FAILED,
            I.RETRYING,
            I.AWAITING_INPUT,
            I.SKIPPED,
            I.CANCELLED,
            I.AVAILABLE,  # released unfinished: pause, shutdown, rescued lease
        }
    ),
    I.RETRYING: frozenset({I.PROCESSING, I.FAILED, I.SKIPPED, I.CANCELLED, I.AVAILABLE}),
    I.AWAITING_INPUT: frozenset({I.AVAILABLE, I.PROCESSED, I.SKIPPED, I.CANCELLED}),
    I.PROCESSED: frozenset({I.PASSED, I.CANCELLED}),
    I.FAILED: frozenset({I.AVAILABLE, I.PASSED, I.SKIPPED, I.CANCELLED}),
    I.PASSED: frozenset(),
    I.SKIPPED: frozenset(),
    I.CANCELLED: frozenset(),
}
#: An item whose visit is in one of these still needs work or a person.
ITEM_OPEN: frozenset[ItemStatus] = frozenset(
    {I.AVAILABLE, I.PROCESSING, I.RETRYING, I.AWAITING_INPUT, I.PROCESSED}
)
ITEM_SETTLED: frozenset[ItemStatus] = frozenset(ItemStatus) - ITEM_OPEN
_OPEN_ORDER = tuple(ITEM_OPEN)  #: for a quick scan of a step's counts

#: Allowed sub-step changes (runs, a person's marks, resets and resumes).
SUBSTEP_TRANSITIONS: Mapping[SubStepStatus, frozenset[SubStepStatus]] = {
    U.PENDING: frozenset({U.IN_PROGRESS, U.SKIPPED, U.COMPLETED, U.FAILED}),
    U.IN_PROGRESS: frozenset({U.COMPLETED, U.FAILED, U.RETRYING, U.SKIPPED, U.PENDING}),
    U.RETRYING: frozenset({U.IN_PROGRESS, U.FAILED, U.PENDING, U.SKIPPED}),
    U.COMPLETED: frozenset({U.PENDING, U.FAILED, U.SKIPPED}),
    U.FAILED: frozenset({U.PENDING, U.COMPLETED, U.SKIPPED}),
    U.SKIPPED: frozenset({U.PENDING, U.COMPLETED, U.FAILED}),
}
#: Sub-step statuses that let dependents run (or be marked completed/skipped).
SUBSTEP_DONE: frozenset[SubStepStatus] = frozenset({U.COMPLETED, U.SKIPPED})

_TABLES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "job": JOB_TRANSITIONS,  # type: ignore[dict-item]
    "step": STEP_TRANSITIONS,  # type: ignore[dict-item]
    "item": ITEM_TRANSITIONS,  # type: ignore[dict-item]
    "substep": SUBSTEP_TRANSITIONS,  # type: ignore[dict-item]
}


def check_transition(machine: str, from_: str, to: str, *, explicit: bool = False) -> None:
    """Raise :class:`InvalidTransition` unless ``from_ -> to`` is in ``machine``'s table.

    ``machine`` is one of ``job``, ``step``, ``item``, ``substep``. ``explicit`` marks a
    change a person asked for by a retry or pass; only such a change may reopen a
    finished job. A change to the same status is not a transition and is refused too.
    """
    table = _TABLES[machine]
    if from_ == to:
        raise InvalidTransition(machine, from_, to, "already in that status")
    allowed = table.get(from_)
    if allowed is None or to not in allowed:
        why = "a final status" if allowed == frozenset() else "not in the transition table"
        raise InvalidTransition(machine, from_, to, why)
    if machine == "job" and (from_, to) in JOB_REOPEN and not explicit:
        raise InvalidTransition(machine, from_, to, "a finished job reopens only by retry")


def derive_step_status(
    counts: Mapping[ItemStatus, int], *, started: bool, upstream_open: bool
) -> StepStatus:
    """The status of one step in one job, from the count of items in each status there.

    ``started`` says whether available items there are processed without a person
    (``auto_process``, or a person started the step); ``upstream_open`` whether items
    at earlier steps could still arrive. See ``docs/states.md`` for the table.
    """

    n = counts.get  # this runs for every step of every commit: no helper calls
    if not any(counts.values()):
        return S.PENDING if upstream_open else S.SKIPPED
    if n(I.PROCESSING) or (started and n(I.AVAILABLE)):
        return S.IN_PROGRESS
    if n(I.RETRYING):
        return S.RETRYING
    if n(I.AWAITING_INPUT) or n(I.PROCESSED) or n(I.AVAILABLE):
        return S.ACTION_REQUIRED
    if n(I.PASSED) or n(I.SKIPPED):
        return S.COMPLETED
    if n(I.FAILED):
        return S.FAILED
    return S.SKIPPED


def has_open(counts: Mapping[ItemStatus, int]) -> bool:
    """Whether any item counted in ``counts`` is open (still needs work or a person)."""
    return any(map(counts.get, _OPEN_ORDER))


#: Derived step statuses that say the step has an open item. A step's status is in this
#: set exactly when :func:`has_open` holds for its counts (see :func:`derive_step_status`),
#: so a step whose counts did not change keeps its "open" answer without a count scan.
STEP_OPEN: frozenset[StepStatus] = frozenset({S.IN_PROGRESS, S.RETRYING, S.ACTION_REQUIRED})


#: Step statuses in which the engine still has work to do (``Orchestrator.wait`` waits).
STEP_BUSY: frozenset[StepStatus] = frozenset({S.IN_PROGRESS, S.RETRYING})


def is_settled(job: JobStatus, steps: Mapping[str, StepStatus]) -> bool:
    """Whether nothing runs for a job: it is final or paused, or no step is busy (what is
    left waits only for people)."""
    if job in JOB_TERMINAL or job is J.PAUSED:
        return True
    return not any(status in STEP_BUSY for status in steps.values())


def derive_job_status(
    current: JobStatus,
    step_counts: Sequence[Mapping[ItemStatus, int]],
    any_open: bool | None = None,
) -> JobStatus:
    """A job's status from the item counts of its steps, in pipeline order.

    ``draft``, ``paused`` and ``cancelled`` are set by actions and kept as they are.
    Otherwise: ``completed`` when no item is open anywhere and at least one item left
    the last step (passed or skipped); ``failed`` when none did; a ``pending`` job stays
    ``pending`` while all its items wait, untouched, at the first step; else
    ``in_progress`` (a job never goes back to ``pending``). ``any_open``, when the
    caller already knows it, says whether any step has an open item.
    """
    if current in (J.DRAFT, J.PAUSED, J.CANCELLED):
        return current
    if any_open is None:
        any_open = any(has_open(c) for c in step_counts)
    if not any_open:
        last = step_counts[-1] if step_counts else {}
        finished = last.get(I.PASSED, 0) + last.get(I.SKIPPED, 0)
        return J.COMPLETED if finished else J.FAILED
    if current is not J.PENDING:
        return J.IN_PROGRESS
    untouched = all(
        count == 0 or (index == 0 and status is I.AVAILABLE)
        for index, counts in enumerate(step_counts)
        for status, count in counts.items()
    )
    if untouched:
        return J.PENDING
    return J.IN_PROGRESS
