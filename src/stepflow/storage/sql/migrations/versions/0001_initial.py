"""Initial schema: jobs, items, visits, counters, events and actions.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Table names come from ``prefix`` and the schema from ``schema`` (see
``stepflow.storage.sql.migrations.env``); never write a literal table name here. This
script is frozen: later changes to ``tables.py`` get a new revision, not an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TABLES = ("actions", "events", "substep_counts", "counts", "visits", "items", "jobs")


def _fk_job(prefix: str, schema: str | None) -> sa.ForeignKey:
    target = f"{schema}.{prefix}jobs.id" if schema else f"{prefix}jobs.id"
    return sa.ForeignKey(target, ondelete="CASCADE")


def upgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]

    op.create_table(
        f"{p}jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("definition_hash", sa.String(64), nullable=False),
        sa.Column("definition", _JSON, nullable=False),
        sa.Column("steps", _JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("auto_process", sa.Boolean, nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("started_steps", _JSON, nullable=False),
        sa.Column("step_statuses", _JSON, nullable=False),
        sa.UniqueConstraint("idempotency_key"),
        schema=schema,
    )
    op.create_index(f"{p}jobs_status", f"{p}jobs", ["status"], schema=schema)

    op.create_table(
        f"{p}items",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(64), _fk_job(p, schema), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("data", _JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        schema=schema,
    )
    op.create_index(f"{p}items_job_position", f"{p}items", ["job_id", "position"], schema=schema)

    op.create_table(
        f"{p}visits",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("job_id", sa.String(64), _fk_job(p, schema), nullable=False),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("step", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ready", sa.Boolean, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("retry_base", sa.Integer, nullable=False),
        sa.Column("token", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("input", _JSON, nullable=True),
        sa.Column("output", _JSON, nullable=True),
        sa.Column("error", _JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("substeps", _JSON, nullable=False),
        sa.Column("progress", _JSON, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        schema=schema,
    )
    for name, columns in (
        ("visits_step_listing", ["job_id", "step", "position"]),
        ("visits_claim", ["status", "ready", "position"]),
        ("visits_retry_due", ["status", "next_attempt_at"]),
        ("visits_lease", ["status", "lease_expires_at"]),
        ("visits_item", ["item_id"]),
    ):
        op.create_index(f"{p}{name}", f"{p}visits", columns, schema=schema)

    op.create_table(
        f"{p}counts",
        sa.Column("job_id", sa.String(64), _fk_job(p, schema), primary_key=True),
        sa.Column("step", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{p}substep_counts",
        sa.Column("job_id", sa.String(64), _fk_job(p, schema), primary_key=True),
        sa.Column("step", sa.String(128), primary_key=True),
        sa.Column("substep", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{p}events",
        sa.Column("job_id", sa.String(64), _fk_job(p, schema), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("step", sa.String(128), nullable=True),
        sa.Column("item_id", sa.String(64), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{p}actions",
        sa.Column("job_id", sa.String(64), _fk_job(p, schema), primary_key=True),
        sa.Column("action_id", sa.String(256), primary_key=True),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    for name in _TABLES:
        op.drop_table(f"{p}{name}", schema=schema)
