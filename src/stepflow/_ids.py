"""Ids for jobs and items that sort by creation time.

Design decision: an id is 32 hex characters, as a random UUID's hex is, but laid out as
RFC 9562's UUID version 7: a 48-bit millisecond timestamp first, then 74 random bits.
Rows made together get neighbouring keys, so a transaction that touches the jobs and
items in flight dirties a few pages of each index instead of one page per row, as
uniformly random keys do (they land all over every B-tree, and each dirty page is
written whole to the database's log at every commit).
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]

_RAND_A_BITS = 12
_RAND_B_BITS = 62


def new_id() -> str:
    """A new id: time-ordered to the millisecond, unique by its random bits."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 of them used
    rand_a = random >> (80 - _RAND_A_BITS)
    rand_b = random & ((1 << _RAND_B_BITS) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return f"{value:032x}"
