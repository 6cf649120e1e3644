"""The public read models: what the orchestrator returns and a UI shows.

Design decision: read models are pydantic (frozen), so a host can return them from an
API as they are (``model_dump(mode="json")``) and a UI gets the same shape whichever
storage is behind. They are built from storage records at the edge; nothing inside the
core passes them around.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._states import ItemStatus, JobStatus, StepStatus, SubStepStatus

__all__ = [
    "ActionRequest",
    "ActionResult",
    "Actor",
    "AvailableAction",
    "Event",
    "Item",
    "ItemPage",
    "Job",
    "PhaseView",
    "Snapshot",
    "StepView",
    "SubStepView",
]


class _Read(BaseModel):
    model_config = ConfigDict(frozen=True)


class Actor(_Read):
    """Who asked for an action: a person, a service, or stepflow itself."""

    id: str = Field(min_length=1, max_length=256)
    kind: Literal["user", "service", "system"] = "user"
    roles: frozenset[str] = frozenset()

    @field_validator("id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("actor id must be printable")
        return value


class Job(_Read):
    """A job as stored: its pinned pipeline version, status and timestamps."""

    id: str
    pipeline: str
    version: str
    definition_hash: str
    status: JobStatus
    auto_process: bool
    metadata: dict[str, Any]
    idempotency_key: str | None
    created_by: str
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    version_seq: int = Field(description="Sequence number of the job's last event")


class Item(_Read):
    """One item at one step: status there, attempts, input, output, error, sub-steps."""

    id: str
    key: str
    data: dict[str, Any]
    step: str
    status: ItemStatus
    attempts: int
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    substeps: dict[str, dict[str, Any]] = {}
    progress: dict[str, Any] | None = None
    next_attempt_at: float | None = None
    position: int
    updated_at: float


class ItemPage(_Read):
    """A page of items; pass ``next_cursor`` back to get the next page."""

    items: list[Item]
    next_cursor: int | None


class Event(_Read):
    """One state change; ``seq`` is gapless and increasing within a job."""

    job_id: str
    seq: int
    type: str
    at: float
    actor: str
    step: str | None = None
    item_id: str | None = None
    data: dict[str, Any] = {}


class SubStepView(_Read):
    key: str
    name: str
    phase: int
    blocking: bool
    depends_on: tuple[str, ...]
    counts: dict[SubStepStatus, int]


class PhaseView(_Read):
    phase: int
    status: SubStepStatus
    substeps: list[SubStepView]


class AvailableAction(_Read):
    """An action a person can take now; ``count`` is how many items it applies to."""

    action: Literal[
        "start",
        "pause",
        "resume",
        "cancel",
        "process",
        "pass",
        "submit",
        "retry",
        "skip",
        "discard",
    ]
    step: str | None = None
    count: int = 0


class StepView(_Read):
    key: str
    name: str
    type: str
    status: StepStatus
    received: int
    counts: dict[ItemStatus, int]
    started: bool
    phases: list[PhaseView] = []


class Snapshot(_Read):
    """The read model a UI polls; its cost does not grow with the number of items."""

    job: Job
    steps: list[StepView]
    actions: list[AvailableAction]
    version: int = Field(description="Increases with every change; use as an ETag")
    poll_after: float | None = Field(
        description="Seconds until the next poll is worth it; None once the job is final"
    )
    totals: dict[str, int]


class ActionRequest(_Read):
    """What the authorisation hook is asked about, before anything is read or written."""

    action: str
    actor: Actor
    job_id: str
    pipeline: str
    step: str | None = None
    item_ids: tuple[str, ...] = ()
    substep: str | None = None


class ActionResult(_Read):
    """What an action did; ``duplicate`` when its action id was applied before."""

    action: str
    job_id: str
    action_id: str | None
    affected: list[str] = Field(description="Ids of the items the action changed")
    version: int
    duplicate: bool = False
