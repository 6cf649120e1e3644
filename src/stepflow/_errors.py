"""Every error stepflow raises, in one place.

Design decision: errors are typed by what the caller can do about them, not by where
they were raised. A host maps ``NotFound`` to 404, ``PermissionDenied`` to 403,
``Conflict`` (and its ``InvalidTransition`` child) to 409 and ``InvalidInput`` (and its
children) to 422, without reading messages. Each error carries the fields a caller
needs (the path, the limit, the from/to statuses) as attributes, and its message names
them too.

Handler-side errors (``StepError`` and its children) are the other half: a handler
raises them to say how a failure should be treated (retried or not, and when).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ActionRejected",
    "BindingError",
    "Conflict",
    "DefinitionError",
    "DuplicateAction",
    "InvalidInput",
    "InvalidTransition",
    "LeaseLost",
    "LimitExceeded",
    "NotFound",
    "PermanentError",
    "PermissionDenied",
    "RateLimited",
    "StaleWrite",
    "StepError",
    "StepTimeout",
    "StepflowError",
    "TransientError",
]


class StepflowError(Exception):
    """Base class of every error stepflow raises on purpose."""


class InvalidInput(StepflowError, ValueError):
    """Input that stepflow refuses before writing anything."""


class DefinitionError(InvalidInput):
    """A pipeline definition is invalid; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        lines = "; ".join(f"{path or '<root>'}: {message}" for path, message in self.problems)
        super().__init__(f"invalid pipeline definition: {lines}")


class BindingError(InvalidInput):
    """A pipeline names handlers or action models that are not bound (``missing``)."""

    def __init__(self, pipeline: str, missing: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.missing = sorted(missing)
        super().__init__(f"pipeline {pipeline!r} needs unbound keys: {', '.join(self.missing)}")


class LimitExceeded(InvalidInput):
    """A value is larger than its documented limit (``field``, ``size``, ``limit``)."""

    def __init__(self, field: str, size: int, limit: int, unit: str = "bytes") -> None:
        self.field = field
        self.size = size
        self.limit = limit
        super().__init__(f"{field} is {size} {unit}, over the limit of {limit} {unit}")


class ActionRejected(InvalidInput):
    """A person's payload failed validation; ``problems`` maps item id to messages."""

    def __init__(self, step: str, problems: dict[str, list[str]]) -> None:
        self.step = step
        self.problems = problems
        shown = "; ".join(f"{item}: {', '.join(msgs)}" for item, msgs in problems.items())
        super().__init__(f"action at step {step!r} rejected, nothing was written: {shown}")


class NotFound(StepflowError, LookupError):
    """An unknown job, step, item or sub-step was named (``kind`` and ``key``)."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found")


class PermissionDenied(StepflowError):
    """The host's authorisation hook refused an action; nothing was written."""

    def __init__(self, actor: str, action: str, job_id: str = "") -> None:
        self.actor = actor
        self.action = action
        self.job_id = job_id
        where = f" on job {job_id}" if job_id else ""
        super().__init__(f"{actor!r} may not {action}{where}")


class Conflict(StepflowError):
    """The action does not fit the current state (terminal job, wrong step state...)."""


class InvalidTransition(Conflict):
    """A status change that the transition table does not allow."""

    def __init__(self, machine: str, from_: str, to: str, why: str) -> None:
        self.machine = machine
        self.from_ = from_
        self.to = to
        self.why = why
        super().__init__(f"{machine}: {from_} -> {to} is not allowed ({why})")


class StaleWrite(Conflict):
    """A guarded write found the row changed since it was read; nothing was written."""


class DuplicateAction(Conflict):
    """An action id that was already applied; ``result`` is what it returned then."""

    def __init__(self, action_id: str, result: dict[str, Any] | None) -> None:
        self.action_id = action_id
        self.result = result
        super().__init__(f"action {action_id!r} was already applied")


class LeaseLost(StaleWrite):
    """A completion came from a lease that expired or was taken over; it was refused."""


class StepError(Exception):
    """Raised by a handler to classify its failure; ``kind`` decides the retry."""

    kind: str = "transient"

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


class TransientError(StepError):
    """A failure that may pass (a 5xx, a dropped connection): retried by the policy."""

    kind = "transient"


class PermanentError(StepError):
    """A failure that will not pass by retrying (bad data, 4xx): never retried."""

    kind = "permanent"


class RateLimited(StepError):
    """The service asked us to slow down; ``retry_after`` seconds wins over the policy."""

    kind = "rate_limited"

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, details: Any = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class StepTimeout(StepError):
    """The work took longer than allowed: retried by the policy as a timeout."""

    kind = "timeout"
