"""Job and item ids: UUID version 7 in hex, ordered by creation time, unique."""

from __future__ import annotations

import uuid

import pytest

from stepflow import _ids
from stepflow._ids import new_id


def test_an_id_is_the_hex_of_a_version_7_uuid() -> None:
    """An id is 32 lower-case hex characters that parse as an RFC 9562 version-7 UUID."""
    value = new_id()
    parsed = uuid.UUID(value)
    assert len(value) == 32 and value == parsed.hex
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_sort_by_the_millisecond_they_were_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id made in a later millisecond sorts after every id of an earlier one, and
    the id carries that millisecond."""
    clock = [1_700_000_000_000_000_000]
    monkeypatch.setattr(_ids.time, "time_ns", lambda: clock[0])
    earlier = [new_id() for _ in range(200)]
    clock[0] += 1_000_000
    later = [new_id() for _ in range(200)]
    assert max(earlier) < min(later)
    assert int(later[0][:12], 16) == clock[0] // 1_000_000


def test_ids_made_in_one_millisecond_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids made in the same millisecond are still all different (74 random bits)."""
    monkeypatch.setattr(_ids.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    assert len({new_id() for _ in range(10_000)}) == 10_000
