"""Partial visit indexes: the claim, retry and lease indexes hold only the visits with
the status their query looks for.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

``visits_claim`` keeps only available visits, ``visits_retry_due`` only retrying ones
and ``visits_lease`` only processing ones (their columns are unchanged). A status change
then rewrites at most two entries of these indexes instead of six, and a settled visit
is in none of them. This script is frozen once released.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_INDEXES = (
    ("visits_claim", ["status", "ready", "position"], "available"),
    ("visits_retry_due", ["status", "next_attempt_at"], "retrying"),
    ("visits_lease", ["status", "lease_expires_at"], "processing"),
)


def upgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    for name, columns, status in _INDEXES:
        op.drop_index(f"{p}{name}", table_name=f"{p}visits", schema=schema)
        where = sa.text(f"status = '{status}'")
        op.create_index(
            f"{p}{name}",
            f"{p}visits",
            columns,
            schema=schema,
            sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    for name, columns, _status in _INDEXES:
        op.drop_index(f"{p}{name}", table_name=f"{p}visits", schema=schema)
        op.create_index(f"{p}{name}", f"{p}visits", columns, schema=schema)
