"""Checking that a value is JSON every backend can store, within a size limit.

Design decision: stepflow stores JSON only (never pickle), encoded by orjson (the
standard library takes over for the rare value orjson refuses), and it refuses, before
anything is written, what some backend could not store faithfully: non-JSON types,
NaN and infinities, ``\\u0000`` and lone surrogates (PostgreSQL rejects both), nesting
deeper than :data:`MAX_DEPTH`, and anything larger than the field's limit. The same
rules hold on every backend, so moving from SQLite to PostgreSQL never turns stored
data into errors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson

from ._errors import InvalidInput, LimitExceeded

__all__ = [
    "LIMITS",
    "MAX_DEPTH",
    "check_json",
    "dumps_text",
    "loads",
]

#: Parse JSON text (``str`` or ``bytes``).
loads: Callable[[str | bytes], Any] = orjson.loads


def dumps_text(value: Any) -> str:
    """``value`` as compact JSON text: orjson, or the standard library for what orjson
    refuses (integers beyond 64 bits), so every value :func:`check_json` accepts encodes."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


MAX_DEPTH = 32
#: Default size limits, in bytes of compact UTF-8 JSON.
LIMITS: dict[str, int] = {
    "metadata": 256 * 1024,
    "item data": 256 * 1024,
    "output": 1024 * 1024,
    "payload": 64 * 1024,
    "progress": 16 * 1024,
}
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def _walk(value: Any, field: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{field} nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if _BAD_TEXT.search(value):
            raise InvalidInput(f"{field} contains \\u0000 or a lone surrogate")
    elif isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{field} has a non-string key {key!r}")
            _walk(key, field, depth)
            _walk(child, field, depth + 1)
    elif isinstance(value, list | tuple):
        for child in value:
            _walk(child, field, depth + 1)
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidInput(f"{field} contains {value!r}, which JSON cannot carry")
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidInput(f"{field} is not JSON-serialisable: {type(value).__name__}")


def check_json(value: Any, field: str, limit: int | None = None) -> int:
    """Raise :class:`InvalidInput` / :class:`LimitExceeded` unless ``value`` is storable.

    ``limit`` defaults to ``LIMITS[field]`` when the field has one. Returns the size in
    bytes of the value's compact JSON form.
    """
    if value is None:  # most handlers return nothing
        return 4
    _walk(value, field, 0)
    size = len(dumps_text(value).encode())
    cap = limit if limit is not None else LIMITS.get(field)
    if cap is not None and size > cap:
        raise LimitExceeded(field, size, cap)
    return size
