"""Global limits: rate-limit windows and concurrency slots shared by every process.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

``<prefix>limits`` holds a row per limit key with the recent start times of its rate
limit; ``<prefix>limit_slots`` a row per concurrency slot with its holder and the
holder's lease expiry. Table names come from ``prefix`` and the schema from ``schema``
(see ``stepflow.storage.sql.migrations.env``). This script is frozen once released.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    op.create_table(
        f"{p}limits",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("starts", _JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{p}limit_slots",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        schema=schema,
    )


def downgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    op.drop_table(f"{p}limit_slots", schema=schema)
    op.drop_table(f"{p}limits", schema=schema)
