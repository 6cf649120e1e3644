"""Building change sets: where an item goes next, and what a result does to it.

Design decision: the decisions about movement — which step an item arrives at, whether
it waits for a person, skips by condition or moves on by itself — are made here, once,
by pure functions that return records and :class:`ChangeSet` parts. The engine (after a
handler returns) and the actions (after a person acts) both call them, so an item
passed by hand and an item that finished by itself move by the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._conditions import evaluate
from ._definitions import Pipeline, Step
from ._ids import new_id
from ._records import ChangeSet, ItemRecord, VisitChange, VisitRecord
from ._states import ItemStatus, SubStepStatus

__all__ = [
    "arrive",
    "condition_context",
    "leave",
    "new_item",
    "new_substep_state",
    "visit_id",
]


def visit_id(item_id: str, step: str) -> str:
    return f"{item_id}/{step}"


def new_item(
    job_id: str,
    key: str,
    data: dict[str, Any],
    position: int,
    now: float,
    parent_id: str | None = None,
) -> ItemRecord:
    return ItemRecord(new_id(), job_id, key, data, now, position, parent_id)


def new_substep_state(status: SubStepStatus = SubStepStatus.PENDING) -> dict[str, Any]:
    return {
        "status": status.value,
        "attempts": 0,
        "output": None,
        "error": None,
        "reason": None,
        "cause": None,
        "next_attempt_at": None,
        "base": 0,
        "started_at": None,
        "finished_at": None,
    }


def condition_context(
    item: ItemRecord,
    job_metadata: Mapping[str, Any],
    outputs: Mapping[str, Any],
    input: Any = None,
    substeps: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "item": item.data,
        "job": job_metadata,
        "outputs": outputs,
        "input": input,
        "substeps": substeps or {},
    }


def _first_status(step: Step) -> tuple[ItemStatus, str | None]:
    if step.runs_work:
        return ItemStatus.AVAILABLE, None
    if step.action is not None:
        return ItemStatus.AWAITING_INPUT, f"waiting for a person: {step.title}"
    return ItemStatus.AVAILABLE, f"waiting for a person to pass it: {step.title}"


def arrive(
    pipeline: Pipeline,
    item: ItemRecord,
    index: int,
    job_metadata: Mapping[str, Any],
    outputs: Mapping[str, Any],
    now: float,
) -> list[VisitRecord]:
    """The visits created when ``item`` arrives at step ``index``.

    A step whose ``run_if`` does not hold gets a ``skipped`` visit with the reason and
    the item goes on to the next step; the last visit returned is where it waits (none
    if it skipped past the last step).
    """
    visits: list[VisitRecord] = []
    context = condition_context(item, job_metadata, outputs)
    for step in pipeline.steps[index:]:
        reason = evaluate(step.run_if, context) if step.run_if else None
        visit = VisitRecord(
            visit_id(item.id, step.key),
            item.job_id,
            item.id,
            step.key,
            ItemStatus.SKIPPED,
            now,
            now,
            position=item.position,
            reason=reason,
        )
        visits.append(visit)
        if reason is not None:
            visit.finished_at = now
            continue
        visit.status, visit.reason = _first_status(step)
        if step.substeps:
            visit.substeps = {sub.key: new_substep_state() for sub in step.substeps}
        break
    return visits


def leave(
    change: ChangeSet,
    pipeline: Pipeline,
    item: ItemRecord,
    step: Step,
    job_metadata: Mapping[str, Any],
    outputs: Mapping[str, Any],
    now: float,
    *,
    from_status: ItemStatus,
    reason: str | None = None,
) -> None:
    """Move a ``processed``/``available``/``failed`` visit on: ``passed``, then arrive.

    ``outputs`` must include this step's output when it has one, so conditions of
    later steps can read it.
    """
    change.visits.append(
        VisitChange(
            visit_id(item.id, step.key),
            expect=from_status,
            status=ItemStatus.PASSED,
            fields={"finished_at": now},
            reason=reason,
        )
    )
    follow(change, pipeline, item, step, job_metadata, outputs, now)


def follow(
    change: ChangeSet,
    pipeline: Pipeline,
    item: ItemRecord,
    step: Step,
    job_metadata: Mapping[str, Any],
    outputs: Mapping[str, Any],
    now: float,
) -> None:
    """Add the item's arrival at the step after ``step`` (if there is one)."""
    index = pipeline.index(step.key) + 1
    if index < len(pipeline.steps):
        change.new_visits.extend(arrive(pipeline, item, index, job_metadata, outputs, now))
