"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Table names come from ``prefix`` and the schema from ``schema`` (see
``stepflow.storage.sql.migrations.env``); never write a literal table name here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade() -> None:
    opts = op.get_context().opts
    prefix: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    opts = op.get_context().opts
    prefix: str = opts["stepflow_prefix"]
    schema: str | None = opts["stepflow_schema"]
    ${downgrades if downgrades else "pass"}
