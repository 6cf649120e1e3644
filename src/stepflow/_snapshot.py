"""Building the snapshot a UI polls, from counters only.

Design decision: a snapshot is a pure function of the job, its per-step and per-sub-step
counters and the pipeline — never of the items — so its cost is the same for 10 items
and for 100,000. The actions a person can take now are derived here from the same
counters, so the buttons a UI shows cannot disagree with what the orchestrator accepts.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._definitions import Pipeline, Step
from ._models import AvailableAction, Job, PhaseView, Snapshot, StepView, SubStepView
from ._records import JobRecord
from ._states import (
    ITEM_OPEN,
    JOB_TERMINAL,
    STEP_BUSY,
    ItemStatus,
    JobStatus,
    StepStatus,
    SubStepStatus,
)
from .ports import JobProgress

__all__ = ["build_snapshot", "job_view", "phase_status"]

I, U = ItemStatus, SubStepStatus
#: Suggested poll delays, in seconds.
POLL_WHILE_RUNNING = 1.0
POLL_WHILE_WAITING = 10.0
POLL_WHILE_IDLE = 30.0


def job_view(job: JobRecord) -> Job:
    return Job(
        id=job.id,
        pipeline=job.pipeline,
        version=job.version,
        definition_hash=job.definition_hash,
        status=job.status,
        auto_process=job.auto_process,
        metadata=job.metadata,
        idempotency_key=job.idempotency_key,
        created_by=job.created_by,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        version_seq=job.seq,
    )


def phase_status(counts: Mapping[SubStepStatus, int], total: int) -> SubStepStatus:
    """A display phase's status from its sub-steps' counts (the original's rule)."""
    if counts.get(U.IN_PROGRESS, 0) or counts.get(U.RETRYING, 0):
        return U.IN_PROGRESS
    if total and counts.get(U.COMPLETED, 0) + counts.get(U.SKIPPED, 0) == total:
        return U.COMPLETED
    if counts.get(U.FAILED, 0):
        return U.FAILED
    if counts.get(U.PENDING, 0) == total:
        return U.PENDING
    return U.IN_PROGRESS


def _phases(step: Step, sub_counts: Mapping[str, Mapping[SubStepStatus, int]]) -> list[PhaseView]:
    by_phase: dict[int, list[SubStepView]] = {}
    for sub in step.substeps:
        counts = {U(s): n for s, n in sub_counts.get(sub.key, {}).items() if n}
        by_phase.setdefault(sub.phase, []).append(
            SubStepView(
                key=sub.key,
                name=sub.title,
                phase=sub.phase,
                blocking=sub.blocking,
                depends_on=sub.depends_on,
                counts=counts,
            )
        )
    phases = []
    for phase, subs in sorted(by_phase.items()):
        summed: dict[SubStepStatus, int] = {}
        for view in subs:
            for status, n in view.counts.items():
                summed[status] = summed.get(status, 0) + n
        total = sum(summed.values())
        phases.append(PhaseView(phase=phase, status=phase_status(summed, total), substeps=subs))
    return phases


def _step_actions(
    step: Step, counts: Mapping[ItemStatus, int], started: bool
) -> list[AvailableAction]:
    def n(*statuses: ItemStatus) -> int:
        return sum(counts.get(s, 0) for s in statuses)

    found: list[AvailableAction] = []
    if step.runs_work and not started and n(I.AVAILABLE):
        found.append(AvailableAction(action="process", step=step.key, count=n(I.AVAILABLE)))
    passable = n(I.PROCESSED) + (0 if step.runs_work else n(I.AVAILABLE))
    if passable:
        found.append(AvailableAction(action="pass", step=step.key, count=passable))
    if step.action is not None and n(I.AWAITING_INPUT):
        found.append(AvailableAction(action="submit", step=step.key, count=n(I.AWAITING_INPUT)))
    if n(I.FAILED):
        found.append(AvailableAction(action="retry", step=step.key, count=n(I.FAILED)))
    skippable = n(I.AVAILABLE, I.AWAITING_INPUT, I.FAILED, I.RETRYING)
    if skippable:
        found.append(AvailableAction(action="skip", step=step.key, count=skippable))
    discardable = n(*ITEM_OPEN) + n(I.FAILED)
    if discardable:
        found.append(AvailableAction(action="discard", step=step.key, count=discardable))
    return found


def build_snapshot(progress: JobProgress, pipeline: Pipeline) -> Snapshot:
    job = progress.job
    steps: list[StepView] = []
    actions: list[AvailableAction] = []
    status = job.status
    if status is JobStatus.DRAFT:
        actions.append(AvailableAction(action="start"))
    if status in (JobStatus.PENDING, JobStatus.IN_PROGRESS):
        actions.append(AvailableAction(action="pause"))
    if status is JobStatus.PAUSED:
        actions.append(AvailableAction(action="resume"))
    if status not in JOB_TERMINAL:
        actions.append(AvailableAction(action="cancel"))
    totals = {"items": job.item_count, "finished": 0, "failed": 0, "cancelled": 0, "open": 0}
    for step in pipeline.steps:
        counts = {I(s): c for s, c in progress.counts.get(step.key, {}).items() if c}
        started = step.runs_work and (job.auto_process or step.key in progress.started)
        steps.append(
            StepView(
                key=step.key,
                name=step.title,
                type=step.type.value,
                status=progress.step_statuses.get(step.key, StepStatus.PENDING),
                received=sum(counts.values()),
                counts=counts,
                started=started,
                phases=_phases(step, progress.substep_counts.get(step.key, {})),
            )
        )
        if status is not JobStatus.CANCELLED:
            actions.extend(_step_actions(step, counts, started))
        totals["failed"] += counts.get(I.FAILED, 0)
        totals["cancelled"] += counts.get(I.CANCELLED, 0)
        totals["open"] += sum(counts.get(s, 0) for s in ITEM_OPEN)
    last = steps[-1].counts
    totals["finished"] = last.get(I.PASSED, 0) + last.get(I.SKIPPED, 0)
    if status in JOB_TERMINAL:
        poll: float | None = None
    elif status in (JobStatus.DRAFT, JobStatus.PAUSED):
        poll = POLL_WHILE_IDLE
    elif any(s.status in STEP_BUSY for s in steps):
        poll = POLL_WHILE_RUNNING
    else:
        poll = POLL_WHILE_WAITING
    return Snapshot(
        job=job_view(job),
        steps=steps,
        actions=actions,
        version=job.seq,
        poll_after=poll,
        totals=totals,
    )
