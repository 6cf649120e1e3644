"""Pipeline definitions: pure, frozen data, loadable from dict, JSON and YAML.

Design decision: a pipeline is data and nothing else — no callables, no classes. Handlers
and action payload models are named by key and bound later (:mod:`stepflow._handlers`),
so one definition file can be validated, hashed, stored with a job and diffed, and the
same data can run under a different set of bound services. Every rule that spans fields
(unique keys, known dependencies, no cycles, condition paths that point somewhere) is
checked here, and :meth:`Pipeline.load` turns any problem into a :class:`DefinitionError`
that names the path (``steps[2].substeps[0].depends_on``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from enum import StrEnum
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._errors import DefinitionError

__all__ = [
    "KEY_PATTERN",
    "Check",
    "ErrorKind",
    "Pipeline",
    "RateLimit",
    "RetryPolicy",
    "Step",
    "StepType",
    "SubStep",
]

#: Keys of pipelines, steps, sub-steps, handlers and actions.
KEY_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
Key = Annotated[str, StringConstraints(pattern=KEY_PATTERN, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=2000)]
CONDITION_ROOTS = ("item", "job", "input", "outputs", "substeps")


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class StepType(StrEnum):
    """Whether a step runs by itself or waits for a person."""

    AUTOMATIC = "automatic"
    ACTION_REQUIRED = "action_required"


class ErrorKind(StrEnum):
    """How a handler failure is classified; the retry policy lists which kinds retry."""

    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class RetryPolicy(_Data):
    """How often and how soon a failed attempt is tried again.

    Waits grow from ``initial_delay`` by ``multiplier`` up to ``max_delay``, plus up to
    ``jitter`` random seconds; a ``RateLimited`` error's ``retry_after`` wins when given.
    """

    max_attempts: int = Field(3, gt=0, le=1000)
    initial_delay: float = Field(1.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    max_delay: float = Field(300.0, gt=0)
    jitter: float = Field(0.0, ge=0)
    retry_on: frozenset[ErrorKind] = frozenset(
        {ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED, ErrorKind.TRANSIENT}
    )


class RateLimit(_Data):
    """Limits on a handler's calls, shared by every user of ``key`` (default: the handler).

    ``calls`` per ``per_seconds``: at most that many calls start in any window of that
    many seconds. ``concurrency``: at most that many calls run at once. Give the rate,
    the cap, or both. With the SQL storage they hold across every process sharing the
    database; otherwise within one process.
    """

    calls: int | None = Field(None, gt=0, le=100_000)
    per_seconds: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, gt=0, le=10_000)
    key: Key | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.calls is None) != (self.per_seconds is None):
            missing = "per_seconds" if self.per_seconds is None else "calls"
            given = "calls" if missing == "per_seconds" else "per_seconds"
            raise PydanticCustomError(
                "rate_limit",
                f"{missing} is missing: {given} needs it (a rate is calls per seconds)",
            )
        if self.calls is None and self.concurrency is None:
            raise PydanticCustomError(
                "rate_limit", "give calls and per_seconds, concurrency, or both"
            )
        return self


def _check_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class Check(_Data):
    """One test on a value found by a dotted path in the item's context.

    The path starts at one of ``item`` (the item's data), ``job`` (the job metadata),
    ``input`` (the payload a person submitted at this step), ``outputs.<step>`` (an
    earlier step's output) or ``substeps.<key>`` (a sub-step's output in this step).
    A plain string is shorthand for ``{"path": ..., "test": "truthy"}``.
    """

    path: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")]
    test: Literal["truthy", "falsy", "not_false", "present", "absent", "equals", "not_equals"] = (
        "truthy"
    )
    value: JsonValue = None

    @property
    def root(self) -> str:
        return self.path.split(".", 1)[0]


Condition = tuple[Annotated[Check, BeforeValidator(_check_shorthand)], ...]


class SubStep(_Data):
    """A unit of work inside a step, run as part of a dependency graph.

    It starts once every dependency is done. A failed dependency skips it (with the
    reason); a skipped dependency skips it too unless ``when_dependency_skipped`` is
    ``run`` (e.g. "register the restaurant on an existing account when creating the
    account was skipped").
    """

    key: Key
    name: Text = ""
    description: Text = ""
    handler: Key | None = None
    depends_on: tuple[Key, ...] = ()
    blocking: bool = False
    run_if: Condition = ()
    retry: RetryPolicy | None = None
    timeout: float | None = Field(None, gt=0)
    rate_limit: RateLimit | None = None
    phase: int = Field(1, gt=0, le=100)
    when_dependency_skipped: Literal["skip", "run"] = "skip"

    @property
    def handler_key(self) -> str:
        return self.handler or self.key

    @property
    def title(self) -> str:
        return self.name or self.key


class Step(_Data):
    """One ordered step of a pipeline.

    ``advance`` says how items leave once processed: ``auto`` at once, ``manual`` when a
    person passes them. An ``expands`` step turns each input item into the items its
    handler emits: the input ends ``cancelled`` ("expanded into N items") and the
    emitted items go on (the lead scrape's first step creates leads this way).
    """

    key: Key
    name: Text = ""
    description: Text = ""
    type: StepType = StepType.AUTOMATIC
    handler: Key | None = None
    action: Key | None = None
    advance: Literal["auto", "manual"] = "auto"
    expands: bool = False
    concurrency: int = Field(5, gt=0, le=10_000)
    timeout: float | None = Field(None, gt=0)
    retry: RetryPolicy = RetryPolicy()
    rate_limit: RateLimit | None = None
    run_if: Condition = ()
    substeps: tuple[SubStep, ...] = ()

    @property
    def title(self) -> str:
        return self.name or self.key

    @property
    def runs_work(self) -> bool:
        """Whether items here are processed by code (a handler or sub-steps)."""
        return self.handler is not None or bool(self.substeps)

    def substep(self, key: str) -> SubStep:
        for sub in self.substeps:
            if sub.key == key:
                return sub
        raise KeyError(key)

    def dependents(self, key: str) -> list[str]:
        """Sub-steps that depend on ``key``, directly or not, in declaration order."""
        found: set[str] = {key}
        changed = True
        while changed:
            changed = False
            for sub in self.substeps:
                if sub.key not in found and found.intersection(sub.depends_on):
                    found.add(sub.key)
                    changed = True
        return [s.key for s in self.substeps if s.key in found and s.key != key]


class Pipeline(_Data):
    """A named, versioned, ordered list of steps."""

    name: Key
    version: Key = "1"
    description: Text = ""
    steps: tuple[Step, ...] = Field(min_length=1, max_length=1000)

    _hash: str = PrivateAttr("")
    _index: dict[str, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_whole(self) -> Self:
        problems = list(_problems(self))
        if problems:
            summary = "; ".join(f"{path}: {message}" for path, message in problems)
            raise PydanticCustomError("definition", summary, {"problems": problems})
        return self

    def model_post_init(self, context: Any, /) -> None:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        self._hash = hashlib.sha256(canonical.encode()).hexdigest()
        self._index = {step.key: index for index, step in enumerate(self.steps)}

    # -- loading and dumping ------------------------------------------------------

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> Pipeline:
        """Validate a mapping; raise :class:`DefinitionError` naming each bad path."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DefinitionError(_flatten(exc)) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Pipeline:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DefinitionError([("", f"not valid JSON: {exc}")]) from None
        return cls._from_loaded(data)

    @classmethod
    def from_yaml(cls, text: str | bytes) -> Pipeline:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DefinitionError([("", f"not valid YAML: {exc}")]) from None
        return cls._from_loaded(data)

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        """Load ``.json``, ``.yaml`` or ``.yml`` by the file's extension."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return cls.from_json(text)
        if path.suffix in (".yaml", ".yml"):
            return cls.from_yaml(text)
        raise DefinitionError([("", f"unknown definition file type {path.suffix!r}")])

    @classmethod
    def _from_loaded(cls, data: Any) -> Pipeline:
        if not isinstance(data, Mapping):
            raise DefinitionError([("", f"expected a mapping, got {type(data).__name__}")])
        return cls.load(data)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict that :meth:`load` turns back into an equal pipeline."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- lookups --------------------------------------------------------------------

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON form; a job pins it when it is created."""
        return self._hash

    def step(self, key: str) -> Step:
        return self.steps[self.index(key)]

    def index(self, key: str) -> int:
        try:
            # Read past pydantic's private-attribute lookup (a method call per read, 25x
            # a dict lookup): every transition asks for a step's index.
            index: dict[str, int] = self.__pydantic_private__["_index"]  # type: ignore[index]
            return index[key]
        except KeyError:
            from ._errors import NotFound

            raise NotFound("step", key) from None

    def next_step(self, key: str) -> Step | None:
        index = self.index(key) + 1
        return self.steps[index] if index < len(self.steps) else None

    def handler_keys(self) -> set[str]:
        keys = {s.handler for s in self.steps if s.handler}
        keys |= {sub.handler_key for s in self.steps for sub in s.substeps}
        return keys

    def action_keys(self) -> set[str]:
        return {s.action for s in self.steps if s.action}


def _problems(pipeline: Pipeline) -> Iterator[tuple[str, str]]:
    seen_steps: dict[str, int] = {}
    for i, step in enumerate(pipeline.steps):
        at = f"steps[{i}]"
        if step.key in seen_steps:
            yield (
                f"{at}.key",
                f"duplicate step key {step.key!r} (also steps[{seen_steps[step.key]}])",
            )
        seen_steps.setdefault(step.key, i)
        earlier = [s.key for s in pipeline.steps[:i]]
        manual = step.advance == "manual"
        if step.type is StepType.ACTION_REQUIRED and step.action is None and not manual:
            yield at, "an action_required step needs an action schema or advance: manual"
        if step.type is StepType.AUTOMATIC and not step.runs_work:
            yield at, "an automatic step needs a handler or sub-steps"
        if step.handler and step.substeps:
            yield f"{at}.handler", "a step with sub-steps runs them instead of a handler"
        yield from _condition_problems(f"{at}.run_if", step.run_if, earlier, ())
        yield from _substep_problems(at, step, earlier)


def _substep_problems(at: str, step: Step, earlier: list[str]) -> Iterator[tuple[str, str]]:
    keys = [sub.key for sub in step.substeps]
    seen: dict[str, int] = {}
    for j, sub in enumerate(step.substeps):
        sub_at = f"{at}.substeps[{j}]"
        if sub.key in seen:
            yield f"{sub_at}.key", f"duplicate sub-step key {sub.key!r}"
        seen.setdefault(sub.key, j)
        for k, dep in enumerate(sub.depends_on):
            if dep not in keys:
                yield f"{sub_at}.depends_on[{k}]", f"unknown sub-step {dep!r}"
            elif dep == sub.key:
                yield f"{sub_at}.depends_on[{k}]", "a sub-step cannot depend on itself"
        yield from _condition_problems(f"{sub_at}.run_if", sub.run_if, earlier, keys)
    graph = {sub.key: [d for d in sub.depends_on if d in keys] for sub in step.substeps}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        yield f"{at}.substeps", f"dependency cycle: {cycle}"


def _condition_problems(
    at: str, checks: Condition, steps: list[str], substeps: list[str] | tuple[()]
) -> Iterator[tuple[str, str]]:
    for k, check in enumerate(checks):
        parts = check.path.split(".")
        if parts[0] not in CONDITION_ROOTS:
            yield f"{at}[{k}].path", f"must start with one of {', '.join(CONDITION_ROOTS)}"
        elif parts[0] == "outputs" and (len(parts) < 2 or parts[1] not in steps):
            yield f"{at}[{k}].path", "outputs.<step> must name an earlier step"
        elif parts[0] == "substeps" and (len(parts) < 2 or parts[1] not in substeps):
            yield f"{at}[{k}].path", "substeps.<key> must name a sub-step of this step"


def _flatten(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        ctx = error.get("ctx") or {}
        if error["type"] == "definition" and "problems" in ctx:
            problems.extend(ctx["problems"])
            continue
        problems.append((_path(error["loc"]), error["msg"]))
    return problems


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "dict"):
            continue
        else:
            out += f".{part}" if out else part
    return out
