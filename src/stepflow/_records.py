"""The rows a storage keeps, and the change sets it applies.

Design decision: these are plain slotted dataclasses, not pydantic models. They are
internal, created by the thousand on the hot path, and already validated at the edge
(definitions, payloads and outputs are checked before a record is built). The public
read models in :mod:`stepflow._models` are built from them.

A storage changes state only by applying a :class:`ChangeSet`: guarded visit changes
(expected status and fencing token), new items and visits, an optional job status set
by an action, and the events that only an action can describe. The storage derives the
rest — counters, item and sub-step events, step and job statuses — with the shared
pure code in :mod:`stepflow._commit`, so every backend derives them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from ._states import ItemStatus, JobStatus, StepStatus

__all__ = [
    "ActionReads",
    "ChangeSet",
    "Claim",
    "CommitResult",
    "EventDraft",
    "EventRecord",
    "ItemRecord",
    "JobRecord",
    "StepInfo",
    "VisitChange",
    "VisitRecord",
    "copy_job",
    "copy_visit",
]


@dataclass(slots=True, frozen=True)
class StepInfo:
    """What a storage needs to know of a step to derive statuses and limit claims."""

    key: str
    runs_work: bool
    concurrency: int


@dataclass(slots=True)
class JobRecord:
    id: str
    pipeline: str
    version: str
    definition_hash: str
    definition: dict[str, Any]
    steps: tuple[StepInfo, ...]
    status: JobStatus
    auto_process: bool
    metadata: dict[str, Any]
    idempotency_key: str | None
    created_by: str
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    seq: int = 0  #: the last event's sequence number; the snapshot version
    item_count: int = 0  #: items created so far; the next item's position follows it

    def step_index(self, key: str) -> int:
        for index, info in enumerate(self.steps):
            if info.key == key:
                return index
        raise KeyError(key)


@dataclass(slots=True)
class ItemRecord:
    id: str
    job_id: str
    key: str
    data: dict[str, Any]
    created_at: float
    position: int = 0  #: order of creation within the job, assigned by the commit
    parent_id: str | None = None  #: the item whose handler emitted this one


@dataclass(slots=True)
class VisitRecord:
    """One item at one step: its status there, attempts, output and sub-steps."""

    id: str
    job_id: str
    item_id: str
    step: str
    status: ItemStatus
    created_at: float
    updated_at: float
    position: int = 0  #: the item's position, for stable listing order
    attempts: int = 0  #: every attempt ever made; never decreases
    retry_base: int = 0  #: ``attempts`` when a person last retried; the policy counts from it
    token: int = 0  #: fencing token; bumped by every claim
    next_attempt_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    substeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None


_VISIT_VALUES = attrgetter(*(f.name for f in fields(VisitRecord)))
_JOB_VALUES = attrgetter(*(f.name for f in fields(JobRecord)))


def copy_job(job: JobRecord) -> JobRecord:
    """A shallow copy of ``job`` (as :func:`dataclasses.replace` makes, faster)."""
    return JobRecord(*_JOB_VALUES(job))


def copy_visit(visit: VisitRecord, changes: Mapping[str, Any] | None = None) -> VisitRecord:
    """A copy of ``visit`` with ``changes`` (field name to value) applied.

    The same as :func:`dataclasses.replace`, at half the cost: every commit copies each
    visit it changes, so this is on the hot path of every transition.
    """
    copy = VisitRecord(*_VISIT_VALUES(visit))
    for name, value in (changes or {}).items():
        setattr(copy, name, value)
    return copy


@dataclass(slots=True)
class VisitChange:
    """A guarded change to one visit.

    Applied only if the visit's status is still ``expect`` (and its token is still
    ``token`` when given); otherwise the whole change set is refused with
    :class:`~stepflow.StaleWrite`. ``status`` ``None`` keeps the status. ``fields`` are
    set as given; ``substeps`` entries replace those sub-steps' states one by one.
    """

    visit_id: str
    expect: ItemStatus
    status: ItemStatus | None = None
    token: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    substeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None  #: why, for the event


@dataclass(slots=True)
class EventDraft:
    type: str
    step: str | None = None
    item_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ChangeSet:
    job_id: str
    actor: str = "system"
    visits: list[VisitChange] = field(default_factory=list)
    new_items: list[ItemRecord] = field(default_factory=list)
    new_visits: list[VisitRecord] = field(default_factory=list)
    job_status: JobStatus | None = None  #: set by an action (start, pause, cancel...)
    expect_job: frozenset[JobStatus] | None = None  #: refuse unless the job is in one
    reopen: bool = False  #: an explicit retry or pass may reopen a finished job
    started_steps: tuple[str, ...] = ()
    events: list[EventDraft] = field(default_factory=list)
    action_id: str | None = None
    action_result: dict[str, Any] | None = None
    #: A new job this change creates (its row; counters and statuses start empty). A
    #: storage stores it with the change in the same transaction, or, when a job with
    #: its idempotency key exists, writes nothing and answers with that job.
    create: JobRecord | None = None


@dataclass(slots=True, frozen=True)
class CommitResult:
    job_id: str
    seq: int
    job_status: JobStatus
    step_statuses: dict[str, StepStatus]
    job: JobRecord | None = None  #: for a creating change: the job as stored
    created: bool = False  #: for a creating change: ``False`` when the key matched a job


@dataclass(slots=True)
class EventRecord:
    job_id: str
    seq: int
    type: str
    at: float
    actor: str
    step: str | None = None
    item_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ActionReads:
    """What a person's action reads before it plans, read together (one transaction
    where the storage can): the job, the action id's earlier result, and — when the
    action names items at a step — their visits there, the items and their outputs."""

    job: JobRecord
    previous: dict[str, Any] | None = None  #: the action id's stored result, if applied
    step: str | None = None  #: the step the visits were read at (``None``: none read)
    item_ids: frozenset[str] = frozenset()  #: the item ids asked for
    visits: dict[str, VisitRecord] = field(default_factory=dict)  #: by item id
    items: dict[str, ItemRecord] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class Claim:
    """A visit claimed for processing under a lease, with what its handler needs."""

    job: JobRecord
    item: ItemRecord
    visit: VisitRecord
    outputs: dict[str, Any]  #: outputs of this item's earlier steps, by step key
