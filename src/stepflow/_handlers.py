"""Binding host code to a pipeline: handlers, action models, and the error classifier.

Design decision: definitions name handlers and action payload models by key; this
registry is where a host binds those keys to code. Binding is checked once, before a
job is created, so a typo in a key is a :class:`BindingError` at start-up instead of a
failed item at three in the morning. A handler takes a single argument, its
:class:`HandlerContext`, and may be ``async`` or plain.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel

from ._definitions import ErrorKind, Pipeline, Step, SubStep
from ._errors import BindingError, InvalidInput, StepError
from ._jsonsafe import check_json

__all__ = [
    "ActionContext",
    "AskPerson",
    "ErrorClassifier",
    "Failure",
    "HandlerContext",
    "Handlers",
    "SkipItem",
]

F = TypeVar("F", bound=Callable[..., Any])
Validator = Callable[[Any, "ActionContext"], Awaitable[None] | None]


class AskPerson(Exception):
    """Raised by :meth:`HandlerContext.ask_person`: the item waits for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SkipItem(Exception):
    """Raised by :meth:`HandlerContext.skip`: the step does nothing for this item."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandlerContext:
    """What a handler is given: the item, where it is, and ways to report back."""

    def __init__(
        self,
        *,
        job_id: str,
        job_metadata: Mapping[str, Any],
        pipeline: Pipeline,
        step: Step,
        substep: SubStep | None,
        item_id: str,
        item_key: str,
        data: Mapping[str, Any],
        attempt: int,
        outputs: Mapping[str, Any],
        substep_outputs: Mapping[str, Any],
        input: Any,
    ) -> None:
        self.job_id = job_id
        #: The job's metadata, as given when it was created.
        self.job_metadata = job_metadata
        self.pipeline = pipeline
        self.step = step
        self.substep = substep
        self.item_id = item_id
        #: The host's key for the item (unique within the job).
        self.item_key = item_key
        #: The item's data, as given when it was created or emitted.
        self.data = data
        #: 1 on the first attempt; counts every attempt, including rescued ones.
        self.attempt = attempt
        #: Outputs of this item's earlier steps, by step key.
        self.outputs = outputs
        #: Outputs of this step's sub-steps that already completed, by sub-step key.
        self.substep_outputs = substep_outputs
        #: The payload a person submitted for this item at this step, if any.
        self.input = input
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self.progress: dict[str, Any] | None = None
        self.progress_dirty = False
        self._cancelled = False

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of this item at this step (and sub-step)."""
        key = f"{self.job_id}:{self.item_id}:{self.step.key}"
        return f"{key}:{self.substep.key}" if self.substep else key

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or the lease lost: stop as soon as you can."""
        return self._cancelled

    def report_progress(
        self, done: int | None = None, total: int | None = None, message: str | None = None
    ) -> None:
        """Record progress for the live view; written within a fraction of a second."""
        progress = {"done": done, "total": total, "message": message}
        check_json(progress, "progress")
        self.progress = progress
        self.progress_dirty = True

    def emit(self, key: str, data: Mapping[str, Any]) -> None:
        """Create a new item in this job; it is written together with this result."""
        payload = dict(data)
        check_json(payload, "item data")
        self.emitted.append((key, payload))

    def ask_person(self, reason: str) -> NoReturn:
        """Stop here; the item waits (``awaiting_input``) for a person's payload."""
        raise AskPerson(reason)

    def skip(self, reason: str) -> NoReturn:
        """Stop here; the step does nothing for this item, which moves on."""
        raise SkipItem(reason)


@dataclass(frozen=True, slots=True)
class ActionContext:
    """What an action validator is given about the item a payload is for."""

    job_id: str
    job_metadata: Mapping[str, Any]
    step: Step
    item_id: str
    item_key: str
    data: Mapping[str, Any]
    outputs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Action:
    model: type[BaseModel]
    validator: Validator | None


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified handler failure."""

    kind: ErrorKind
    message: str
    type: str
    retry_after: float | None = None
    details: Any = None

    def as_error(self, attempt: int) -> dict[str, Any]:
        error = {
            "kind": self.kind.value,
            "message": self.message[:2000],
            "type": self.type,
            "attempt": attempt,
        }
        if self.details is not None:
            try:
                check_json(self.details, "error details", 16 * 1024)
                error["details"] = self.details
            except InvalidInput:
                error["details"] = repr(self.details)[:2000]
        return error


class ErrorClassifier:
    """Maps exceptions to an :class:`ErrorKind` (and a retry-after, when known).

    :class:`StepError` subclasses carry their kind; ``TimeoutError`` is a timeout;
    types registered with :meth:`register` come next (most specific class first);
    anything else is ``unknown`` (permanent by default).
    """

    def __init__(self, unknown: ErrorKind = ErrorKind.PERMANENT) -> None:
        self.unknown = unknown
        self._rules: dict[type[BaseException], ErrorKind | Callable[[Any], ErrorKind]] = {
            TimeoutError: ErrorKind.TIMEOUT
        }

    def register(
        self,
        exc_type: type[BaseException],
        kind: ErrorKind | str | Callable[[Any], ErrorKind],
    ) -> None:
        """Classify ``exc_type`` (and subclasses) as ``kind``, or by calling it."""
        self._rules[exc_type] = ErrorKind(kind) if isinstance(kind, str) else kind

    def classify(self, exc: BaseException) -> Failure:
        message = str(exc) or type(exc).__name__
        name = type(exc).__name__
        if isinstance(exc, StepError):
            retry_after = getattr(exc, "retry_after", None)
            return Failure(ErrorKind(exc.kind), message, name, retry_after, exc.details)
        for klass in type(exc).__mro__:
            rule = self._rules.get(klass)
            if rule is not None:
                kind = rule if isinstance(rule, ErrorKind) else ErrorKind(rule(exc))
                return Failure(kind, message, name)
        return Failure(self.unknown, message, name)


class Handlers:
    """A registry of handlers and action models, bound to definitions by key."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Callable[[HandlerContext], Any], bool]] = {}
        self._actions: dict[str, _Action] = {}

    def add(self, key: str, func: Callable[[HandlerContext], Any]) -> None:
        """Bind ``key`` to ``func`` (``async def`` or plain); rebinding replaces it."""
        if not callable(func):
            raise TypeError(f"handler for {key!r} is not callable")
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
            getattr(func, "__call__", None)  # noqa: B004 - async callable objects
        )
        self._handlers[key] = (func, is_async)

    def handler(self, key: str) -> Callable[[F], F]:
        """Decorator form of :meth:`add`."""

        def bind(func: F) -> F:
            self.add(key, func)
            return func

        return bind

    def action(self, key: str, model: type[BaseModel], validator: Validator | None = None) -> None:
        """Bind action ``key`` to a pydantic payload model and an optional validator.

        The validator gets the parsed payload and an :class:`ActionContext`; it raises
        ``ValueError`` (or returns normally) to reject (or accept) the payload.
        """
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"action model for {key!r} must be a pydantic model class")
        self._actions[key] = _Action(model, validator)

    def update(self, other: Handlers) -> None:
        """Add every binding of ``other`` (a plugin's) to this registry."""
        self._handlers.update(other._handlers)
        self._actions.update(other._actions)

    def get(self, key: str) -> tuple[Callable[[HandlerContext], Any], bool]:
        return self._handlers[key]

    def get_action(self, key: str) -> _Action:
        return self._actions[key]

    def check(self, pipeline: Pipeline) -> None:
        """Raise :class:`BindingError` unless every key the pipeline names is bound."""
        missing = [f"handler {k}" for k in pipeline.handler_keys() if k not in self._handlers]
        missing += [f"action {k}" for k in pipeline.action_keys() if k not in self._actions]
        if missing:
            raise BindingError(pipeline.name, missing)
