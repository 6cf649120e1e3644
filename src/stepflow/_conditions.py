"""Evaluating run conditions (``run_if``) against an item's context.

Design decision: a condition is data (a list of :class:`~stepflow.Check`), so the
schedule of a pipeline can be read, stored and shown without running host code. This
module is the only place that gives those checks meaning; it is pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._definitions import Check

__all__ = ["evaluate", "resolve"]

_MISSING: Any = object()


def resolve(context: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in ``context``, or a private sentinel if absent."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _holds(check: Check, value: Any) -> bool:
    present = value is not _MISSING
    match check.test:
        case "truthy":
            return present and bool(value)
        case "falsy":
            return not present or not value
        case "not_false":
            return value is not False
        case "present":
            return present and value is not None
        case "absent":
            return not present or value is None
        case "equals":
            return present and value == check.value
        case "not_equals":
            return not present or value != check.value
    raise AssertionError(check.test)  # pragma: no cover - Literal is exhaustive


def evaluate(checks: Sequence[Check], context: Mapping[str, Any]) -> str | None:
    """``None`` when every check holds; otherwise the reason, naming the first that fails."""
    for check in checks:
        if not _holds(check, resolve(context, check.path)):
            shown = f" {check.value!r}" if check.test in ("equals", "not_equals") else ""
            return f"condition not met: {check.path} {check.test}{shown}"
    return None
