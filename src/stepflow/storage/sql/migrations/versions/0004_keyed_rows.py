"""SQLite keeps counter and event rows in their primary key's B-tree (``WITHOUT ROWID``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

``<prefix>counts``, ``<prefix>substep_counts`` and ``<prefix>events`` are written by
nearly every commit and always found by their composite primary key. In an ordinary
SQLite table each row lives in the table's B-tree and again in the key's index; rebuilt
``WITHOUT ROWID``, a write updates one tree. The tables are rebuilt with their rows
(the migrator's connections have foreign keys off; the keys are checked afterwards).
PostgreSQL has no rowid: nothing changes there. This script is frozen once released.
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = ("counts", "substep_counts", "events")


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    for name in _TABLES:
        with op.batch_alter_table(
            f"{p}{name}",
            schema=schema,
            recreate="always",
            table_kwargs={"sqlite_with_rowid": with_rowid},
        ):
            pass
    broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"foreign keys broken by the rebuild: {broken[:5]}")


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
