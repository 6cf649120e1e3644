"""Alembic environment for stepflow's own migrations (run by ``stepflow.storage.sql.migrate``).

Design decision: online only, on a connection the caller opened and locked; the table
prefix and schema arrive as Alembic attributes (validated already) and are handed to
the revision scripts through the migration context, so one set of scripts serves every
prefix and schema. The version table is stepflow's own, next to its tables.
"""

from __future__ import annotations

from alembic import context

from stepflow.storage.sql.migrate import version_table_name
from stepflow.storage.sql.tables import build_tables


def run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "stepflow's migrations run through stepflow.storage.sql.migrate.upgrade() "
            "or `stepflow db upgrade`, not the alembic command line"
        )
    prefix: str = config.attributes.get("stepflow_prefix", "stepflow_")
    schema: str | None = config.attributes.get("stepflow_schema")
    tables = build_tables(prefix, schema)  # validates again; also the autogenerate target
    context.configure(
        connection=connection,
        target_metadata=tables.metadata,
        version_table=version_table_name(prefix),
        version_table_schema=schema,
        stepflow_prefix=prefix,
        stepflow_schema=schema,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
