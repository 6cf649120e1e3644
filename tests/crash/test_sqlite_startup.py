"""SQLite storage opening while another connection writes: it waits for the lock, never fails.

Design decision: the race of workers starting together on a new SQLite file is staged
in one process: the file is migrated (as ``stepflow db upgrade`` leaves it, before any
storage switched it to WAL), another connection holds the write lock, and the storage
starts; the holder lets go half a second later. A storage that waits, as the busy
timeout promises, starts; one that fails at once has let "database is locked" out.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from stepflow.storage.sql import SQLStorage
from stepflow.storage.sql.migrate import upgrade

pytestmark = pytest.mark.anyio

#: How long the other connection holds the write lock (well under the busy timeout).
HOLD = 0.5


@pytest.mark.parametrize("create_tables", [False, True], ids=["migrated", "migrating"])
async def test_storage_start_waits_while_another_connection_holds_the_write_lock(
    tmp_path: Path, create_tables: bool
) -> None:
    """Starting SQLite storage while another connection writes waits for the lock: no error."""
    path = tmp_path / "fresh.db"
    upgrade(str(path))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    storage = SQLStorage(str(path), create_tables=create_tables)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("CREATE TABLE host_table (x INTEGER)")  # a write in flight

        async def let_go() -> None:
            await anyio.sleep(HOLD)  # the other writer's transaction, then its commit
            holder.execute("COMMIT")

        async with anyio.create_task_group() as tg:
            tg.start_soon(let_go)
            await storage.start()
        assert await storage.now() > 0
    finally:
        await storage.aclose()
        holder.close()
