"""What applying a change set means, computed without I/O, shared by every storage.

Design decision: a storage does only the I/O of a commit — read the rows a change set
touches, write what this module says, in one transaction. Checking guards and the
transition table, moving counters, writing item and sub-step events and re-deriving
step and job statuses all happen here, once, so the in-memory storage and the SQL
storage cannot disagree about what a change does, and counters are never updated by
hand anywhere else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._errors import Conflict, LeaseLost, NotFound, StaleWrite
from ._records import ChangeSet, EventDraft, JobRecord, VisitChange, VisitRecord, copy_visit
from ._states import (
    JOB_TERMINAL,
    STEP_OPEN,
    ItemStatus,
    JobStatus,
    StepStatus,
    SubStepStatus,
    check_transition,
    derive_job_status,
    derive_step_status,
    has_open,
)

#: Step statuses that depend on what happens upstream, not only on the step's counts.
_UPSTREAM_DECIDED = frozenset({StepStatus.PENDING, StepStatus.SKIPPED})

__all__ = [
    "CommitPlan",
    "claim_change",
    "initial_step_statuses",
    "plan_commit",
    "release_change",
    "rescue_change",
    "step_statuses",
]

StepCounts = Mapping[str, Mapping[ItemStatus, int]]


@dataclass(slots=True)
class CommitPlan:
    """Everything a storage writes for one change set, in one transaction."""

    visits: dict[str, VisitRecord]  #: changed and new visits, by id
    count_deltas: Counter[tuple[str, ItemStatus]] = field(default_factory=Counter)
    substep_deltas: Counter[tuple[str, str, SubStepStatus]] = field(default_factory=Counter)
    job_status: JobStatus = JobStatus.DRAFT
    job_fields: dict[str, float | int | None] = field(default_factory=dict)
    step_statuses: dict[str, StepStatus] = field(default_factory=dict)  #: changed only
    started: frozenset[str] = frozenset()
    events: list[EventDraft] = field(default_factory=list)


def claim_change(visit: VisitRecord, owner: str, expires: float, now: float) -> VisitChange:
    """The change that claims a due visit for ``owner`` until ``expires``."""
    return VisitChange(
        visit.id,
        expect=visit.status,
        status=ItemStatus.PROCESSING,
        fields={
            "attempts": visit.attempts + 1,
            "token": visit.token + 1,
            "lease_owner": owner,
            "lease_expires_at": expires,
            "next_attempt_at": None,
            "started_at": visit.started_at or now,
        },
    )


def rescue_change(visit: VisitRecord, delay: float | None, now: float) -> VisitChange:
    """The change that takes back a visit whose lease expired: retry after ``delay``, or
    fail when the policy is spent (``delay`` is ``None``)."""
    fields: dict[str, object] = {"lease_owner": None, "lease_expires_at": None}
    if delay is None:
        status = ItemStatus.FAILED
        fields.update(error={"kind": "timeout", "message": "lease expired"}, finished_at=now)
    else:
        status = ItemStatus.RETRYING
        fields["next_attempt_at"] = now + delay
    return VisitChange(
        visit.id,
        expect=ItemStatus.PROCESSING,
        status=status,
        token=visit.token,
        fields=fields,
        reason="lease expired",
    )


def release_change(visit: VisitRecord) -> VisitChange:
    """The change that hands an unfinished, held visit back for another worker."""
    return VisitChange(
        visit.id,
        expect=ItemStatus.PROCESSING,
        status=ItemStatus.AVAILABLE,
        token=visit.token,
        fields={"lease_owner": None, "lease_expires_at": None},
        reason="released at shutdown",
    )


def initial_step_statuses(job: JobRecord) -> dict[str, StepStatus]:
    return {info.key: StepStatus.PENDING for info in job.steps}


def step_statuses(
    job: JobRecord, counts: StepCounts, started: frozenset[str] | set[str]
) -> dict[str, StepStatus]:
    """Each step's derived status, in pipeline order."""
    result: dict[str, StepStatus] = {}
    upstream_open = False
    for info in job.steps:
        step_counts = counts.get(info.key, {})
        result[info.key] = derive_step_status(
            step_counts,
            started=info.runs_work and (job.auto_process or info.key in started),
            upstream_open=upstream_open,
        )
        upstream_open = upstream_open or has_open(step_counts)
    return result


def plan_commit(
    job: JobRecord,
    before: Mapping[str, VisitRecord],
    change: ChangeSet,
    counts: StepCounts,
    statuses: Mapping[str, StepStatus],
    started: frozenset[str],
    now: float,
) -> CommitPlan:
    """Check ``change`` against ``before`` and the tables; say what to write.

    ``before`` holds the current rows of every visit the change names; ``counts``,
    ``statuses`` and ``started`` are the job's current counters, step statuses and
    hand-started steps. Raises :class:`StaleWrite` / :class:`LeaseLost` when a guard
    fails, :class:`InvalidTransition` for a change outside the tables, and
    :class:`Conflict` when the job is not in an expected status. Nothing is written by
    the caller when this raises.
    """
    if change.expect_job is not None and job.status not in change.expect_job:
        raise Conflict(
            f"job {job.id} is {job.status}, the action needs one of "
            + ", ".join(sorted(change.expect_job))
        )
    if job.status is JobStatus.CANCELLED and (change.visits or change.new_visits):
        raise Conflict(f"job {job.id} is cancelled")
    plan = CommitPlan(visits={}, started=started | frozenset(change.started_steps))
    plan.events.extend(change.events)  # the action (or creation) first, then its effects
    for vc in change.visits:
        own = plan.visits.get(vc.visit_id)  # already copied by this plan: change in place
        current = own or before.get(vc.visit_id)
        if current is None:
            raise NotFound("visit", vc.visit_id)
        status, old_substeps = current.status, current.substeps
        if status is not vc.expect:
            raise StaleWrite(f"visit {vc.visit_id} is {status}, expected {vc.expect}")
        if vc.token is not None and current.token != vc.token:
            raise LeaseLost(f"visit {vc.visit_id} was claimed again (token {current.token})")
        if own is None:
            after = copy_visit(current, vc.fields)
        else:
            after = own
            for name, value in vc.fields.items():
                setattr(after, name, value)
        after.updated_at = now
        if vc.substeps:
            after.substeps = dict(old_substeps)
            for key, state in vc.substeps.items():
                _substep_change(plan, after, old_substeps.get(key), key, state)
                after.substeps[key] = state
        if vc.status is not None and vc.status is not status:
            check_transition("item", status, vc.status)
            after.status = vc.status
            plan.count_deltas[(after.step, status)] -= 1
            plan.count_deltas[(after.step, vc.status)] += 1
            data: dict[str, object] = {"from": status.value, "to": vc.status.value}
            if after.attempts:
                data["attempt"] = after.attempts
            if vc.reason:
                data["reason"] = vc.reason
            plan.events.append(EventDraft("item.status", after.step, after.item_id, data))
        plan.visits[vc.visit_id] = after
    positions: dict[str, int] = {}
    for offset, item in enumerate(change.new_items, start=1):
        item.position = positions[item.id] = job.item_count + offset
        plan.events.append(
            EventDraft("item.created", None, item.id, {"key": item.key, "parent": item.parent_id})
        )
    if change.new_items:
        plan.job_fields["item_count"] = job.item_count + len(change.new_items)
    for visit in change.new_visits:
        visit.position = positions.get(visit.item_id, visit.position)
        plan.visits[visit.id] = visit
        plan.count_deltas[(visit.step, visit.status)] += 1
        data = {"from": None, "to": visit.status.value}
        if visit.reason:
            data["reason"] = visit.reason
        plan.events.append(EventDraft("item.status", visit.step, visit.item_id, data))
        for key, state in visit.substeps.items():
            plan.substep_deltas[(visit.step, key, SubStepStatus(state["status"]))] += 1
    moved = (
        change.job_status is not None or plan.started != started or any(plan.count_deltas.values())
    )
    _derive(plan, job, change, counts, statuses, started, now, moved)
    return plan


def _substep_change(
    plan: CommitPlan,
    visit: VisitRecord,
    old: Mapping[str, object] | None,
    key: str,
    new: Mapping[str, object],
) -> None:
    to = SubStepStatus(str(new["status"]))
    if old is None:
        plan.substep_deltas[(visit.step, key, to)] += 1
        return
    from_ = SubStepStatus(str(old["status"]))
    if from_ is to:
        return
    check_transition("substep", from_, to)
    plan.substep_deltas[(visit.step, key, from_)] -= 1
    plan.substep_deltas[(visit.step, key, to)] += 1
    data: dict[str, object] = {"substep": key, "from": from_.value, "to": to.value}
    for extra in ("attempts", "reason"):
        if new.get(extra):
            data[extra] = new[extra]
    plan.events.append(EventDraft("substep.status", visit.step, visit.item_id, data))


def _derive(
    plan: CommitPlan,
    job: JobRecord,
    change: ChangeSet,
    counts: StepCounts,
    statuses: Mapping[str, StepStatus],
    started: frozenset[str],
    now: float,
    moved: bool,
) -> None:
    if not moved:
        # Nothing that statuses derive from has moved (a sub-step saved, progress
        # reported): the stored statuses are already what derivation would give.
        plan.job_status = job.status
        return
    moved_counts: dict[str, dict[ItemStatus, int]] = {}  # never the storage's own counters
    for (step, status), delta in plan.count_deltas.items():
        if delta:
            if step not in moved_counts:
                moved_counts[step] = dict(counts.get(step, {}))
            moved_counts[step][status] = moved_counts[step].get(status, 0) + delta
    new_statuses, any_open = _changed_step_statuses(
        job, counts, moved_counts, statuses, started, plan.started
    )
    current = job.status
    if change.job_status is not None and change.job_status is not current:
        check_transition("job", current, change.job_status, explicit=change.reopen)
        plan.events.append(
            EventDraft("job.status", data={"from": current.value, "to": change.job_status.value})
        )
        current = change.job_status
    after_counts = [moved_counts.get(i.key) or counts.get(i.key, {}) for i in job.steps]
    derived = derive_job_status(current, after_counts, any_open)
    if derived is not current:
        check_transition("job", current, derived, explicit=change.reopen)
        plan.events.append(
            EventDraft("job.status", data={"from": current.value, "to": derived.value})
        )
    plan.job_status = derived
    if derived is not job.status:
        if job.started_at is None and derived not in (JobStatus.DRAFT, JobStatus.CANCELLED):
            plan.job_fields["started_at"] = now
        plan.job_fields["finished_at"] = now if derived in JOB_TERMINAL else None
    for key, step_status in new_statuses.items():
        old = statuses.get(key, StepStatus.PENDING)
        check_transition("step", old, step_status)
        plan.step_statuses[key] = step_status
        plan.events.append(
            EventDraft("step.status", key, data={"from": old.value, "to": step_status.value})
        )


def _changed_step_statuses(
    job: JobRecord,
    counts: StepCounts,
    moved_counts: Mapping[str, Mapping[ItemStatus, int]],
    statuses: Mapping[str, StepStatus],
    started: frozenset[str],
    started_after: frozenset[str],
) -> tuple[dict[str, StepStatus], bool]:
    """The steps whose derived status changes, in pipeline order, and whether any step
    has an open item after the change: what :func:`step_statuses` would give,
    re-deriving only the steps that can change.

    A step can change only if its counts moved, its started flag flipped, or it holds
    no open item and whether items could still arrive from upstream changed (that
    tells ``pending`` from ``skipped``). Every other step keeps its stored status, and
    whether it has an open item is read off that status (``STEP_OPEN``).
    """
    flipped = started_after ^ started
    changed: dict[str, StepStatus] = {}
    upstream_open = False
    for info in job.steps:
        key = info.key
        old = statuses.get(key, StepStatus.PENDING)
        if key in moved_counts or key in flipped or old in _UPSTREAM_DECIDED:
            new = derive_step_status(
                moved_counts.get(key) or counts.get(key, {}),
                started=info.runs_work and (job.auto_process or key in started_after),
                upstream_open=upstream_open,
            )
            if new is not old:
                changed[key] = new
        else:
            new = old
        upstream_open = upstream_open or new in STEP_OPEN
    return changed, upstream_open
