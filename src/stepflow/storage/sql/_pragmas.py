"""How every SQLite connection stepflow opens is set up.

Design decision: one function prepares each new SQLite connection — the storage's and
the migrator's alike — so a database file is in WAL mode from its first migration, and
no process depends on another having switched it. The busy timeout is set first, and
the switch to WAL (which SQLite refuses at once, whatever the timeout, while another
connection holds a write transaction on a file not yet in WAL mode) is retried on
"locked" for as long as the busy timeout, so several processes may start together on a
new file.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

__all__ = ["prepare_sqlite"]


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc).lower() or "busy" in str(exc).lower()
    )


def prepare_sqlite(
    dbapi_connection: Any, busy_timeout: float, *, foreign_keys: bool = True
) -> None:
    """Autocommit driver mode (stepflow issues BEGIN), busy timeout, WAL, FULL sync, and
    foreign keys on (the migrator turns them off: see ``migrate``)."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        mode = cursor.execute("PRAGMA journal_mode").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            for attempt in Retrying(
                retry=retry_if_exception(_locked),
                wait=wait_random_exponential(multiplier=0.005, max=0.2),
                stop=stop_after_delay(busy_timeout),
                reraise=True,
            ):
                with attempt:
                    cursor.execute("PRAGMA journal_mode=WAL").fetchall()
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    finally:
        cursor.close()
