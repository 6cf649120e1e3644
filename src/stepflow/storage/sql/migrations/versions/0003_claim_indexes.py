"""Claim indexes that do not grow with a job's items.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

A claim used to walk every available visit in position order, skipping those of steps
already at their concurrency cap: with 10,000 items waiting at a full first step, every
claim read all of them. Claims now look up the steps that have available work (a
partial index on ``<prefix>counts``) and read each one's ready, available visits in
position order (``visits_step_claim``), so a claim reads what it takes. The old
``visits_claim`` index served only that walk and is dropped (one index fewer to
update on every change of a visit). This script is frozen once released.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

#: Stated here, not imported: a released migration never changes with the code.
_AVAILABLE_WORK = "status = 'available' AND n > 0"


def upgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    op.create_index(
        f"{p}visits_step_claim",
        f"{p}visits",
        ["job_id", "step", "status", "ready", "position"],
        schema=schema,
    )
    op.create_index(
        f"{p}counts_available",
        f"{p}counts",
        ["job_id", "step"],
        schema=schema,
        sqlite_where=sa.text(_AVAILABLE_WORK),
        postgresql_where=sa.text(_AVAILABLE_WORK),
    )
    op.drop_index(f"{p}visits_claim", f"{p}visits", schema=schema)


def downgrade() -> None:
    opts = op.get_context().opts
    p: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    op.create_index(
        f"{p}visits_claim", f"{p}visits", ["status", "ready", "position"], schema=schema
    )
    op.drop_index(f"{p}counts_available", f"{p}counts", schema=schema)
    op.drop_index(f"{p}visits_step_claim", f"{p}visits", schema=schema)
