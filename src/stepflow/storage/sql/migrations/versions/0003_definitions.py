"""Pipeline definitions stored once, by hash, instead of in every job's row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

``<prefix>definitions`` holds one row per definition hash (the pipeline's name and
version, the definition, when it was first stored); the definitions already in
``<prefix>jobs`` are copied there (one per hash) and the jobs' ``definition`` column is
dropped. A job row is rewritten by nearly every commit of its job, so it is kept small.

SQLite gets the column dropped by rebuilding the table (the way that works on every
SQLite version); the migrator's connections have foreign keys off, so dropping the old
table does not cascade into the items, visits and events that reference it, and the
keys are checked once the new table is in place. This script is frozen once released.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _jobs(prefix: str, schema: str | None) -> sa.TableClause:
    return sa.table(
        f"{prefix}jobs",
        sa.column("id"),
        sa.column("pipeline"),
        sa.column("version"),
        sa.column("definition_hash"),
        sa.column("definition"),
        sa.column("created_at"),
        schema=schema,
    )


def _definitions(prefix: str, schema: str | None) -> sa.TableClause:
    return sa.table(
        f"{prefix}definitions",
        sa.column("hash"),
        sa.column("pipeline"),
        sa.column("version"),
        sa.column("definition"),
        sa.column("created_at"),
        schema=schema,
    )


def _drop_job_definitions(prefix: str, schema: str | None) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column(f"{prefix}jobs", "definition", schema=schema)
        return
    with op.batch_alter_table(f"{prefix}jobs", schema=schema, recreate="always") as batch:
        batch.drop_column("definition")
    broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"foreign keys broken by the rebuild of {prefix}jobs: {broken[:5]}")


def upgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    op.create_table(
        f"{p}definitions",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("definition", _JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        schema=schema,
    )
    jobs, definitions = _jobs(p, schema), _definitions(p, schema)
    first_of_each = sa.select(sa.func.min(jobs.c.id)).group_by(jobs.c.definition_hash)
    op.execute(
        definitions.insert().from_select(
            ["hash", "pipeline", "version", "definition", "created_at"],
            sa.select(
                jobs.c.definition_hash,
                jobs.c.pipeline,
                jobs.c.version,
                jobs.c.definition,
                jobs.c.created_at,
            ).where(jobs.c.id.in_(first_of_each)),
        )
    )
    _drop_job_definitions(p, schema)


def downgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    with op.batch_alter_table(f"{p}jobs", schema=schema) as batch:
        batch.add_column(sa.Column("definition", _JSON, nullable=True))
    jobs, definitions = _jobs(p, schema), _definitions(p, schema)
    op.execute(
        jobs.update().values(
            definition=sa.select(definitions.c.definition)
            .where(definitions.c.hash == jobs.c.definition_hash)
            .scalar_subquery()
        )
    )
    op.drop_table(f"{p}definitions", schema=schema)
