"""Schema migrations for the SQL storage: Alembic, shipped inside the package.

Design decision: stepflow owns its migrations and its own version table,
``<prefix>alembic_version``, in the same schema as its tables, so it can live in a
database whose host runs its own Alembic history without either one seeing the other's
revisions. Alembic is configured in code (no ``alembic.ini``); the prefix and schema are
validated by :func:`build_tables` before any connection is made and reach the
migrations as Alembic attributes, never as SQL text. One migrator at a time: the whole
upgrade runs in one transaction that first takes a PostgreSQL transaction-level advisory
lock (an integer key derived from schema and prefix) or SQLite's write lock
(``BEGIN IMMEDIATE``, waiting on a busy timeout), so a second migrator waits, then finds
the database at head and does nothing. A database whose revision this stepflow does not
know was migrated by a newer stepflow; that is refused with :class:`SchemaTooNew`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.schema import CreateSchema

from ..._errors import InvalidInput
from ._pragmas import prepare_sqlite
from .tables import build_tables

__all__ = [
    "HEAD",
    "SchemaTooNew",
    "check_schema",
    "check_schema_on",
    "current_revision",
    "sync_url",
    "upgrade",
    "version_table_name",
]

#: The newest revision this version of stepflow knows (and ``upgrade`` goes to).
HEAD = "0005"

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class SchemaTooNew(InvalidInput):
    """The database was migrated by a newer stepflow (``revision`` is unknown here)."""

    def __init__(self, revision: str, head: str = HEAD) -> None:
        self.revision = revision
        self.head = head
        super().__init__(
            f"the database's stepflow schema is at revision {revision!r}, which this "
            f"version of stepflow does not know (its newest is {head!r}); "
            "upgrade stepflow instead of migrating the database"
        )


def version_table_name(prefix: str) -> str:
    """stepflow's own Alembic version table: ``<prefix>alembic_version``.

    With an empty prefix it is ``alembic_version_stepflow``, never a host's
    ``alembic_version``.
    """
    return f"{prefix}alembic_version" if prefix else "alembic_version_stepflow"


def sync_url(url: str) -> str:
    """A synchronous driver URL for ``url`` (a file path, SQLite or PostgreSQL URL)."""
    if "://" not in url:
        return f"sqlite:///{url}"
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise InvalidInput(f"unsupported database URL scheme {parsed.drivername!r}")


def upgrade(
    url: str, *, prefix: str = "stepflow_", schema: str | None = None, revision: str = "head"
) -> str:
    """Migrate stepflow's tables in the database at ``url`` to ``revision``.

    Safe to run from several processes at once: one migrates, the others wait and then
    find nothing to do. A missing PostgreSQL ``schema`` is created. Returns the
    revision the database is at afterwards.
    """
    build_tables(prefix, schema)  # validates both before any connection
    engine = _engine(url)
    try:
        with _locked(engine, prefix, schema) as conn:
            _refuse_unknown(_read_revision(conn, prefix, schema))
            config = _config(conn, prefix, schema)
            command.upgrade(config, revision)
            now = _read_revision(conn, prefix, schema)
    finally:
        engine.dispose()
    return now or "base"


def current_revision(
    url: str, *, prefix: str = "stepflow_", schema: str | None = None
) -> str | None:
    """The database's stepflow revision, or ``None`` when it was never migrated."""
    build_tables(prefix, schema)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return _read_revision(conn, prefix, schema)
    finally:
        engine.dispose()


def check_schema(url: str, *, prefix: str = "stepflow_", schema: str | None = None) -> str | None:
    """Raise :class:`SchemaTooNew` if a newer stepflow migrated the database.

    Returns the database's revision (``None`` when never migrated), for the caller to
    compare with :data:`HEAD`.
    """
    revision = current_revision(url, prefix=prefix, schema=schema)
    _refuse_unknown(revision)
    return revision


def check_schema_on(
    conn: Connection, *, prefix: str = "stepflow_", schema: str | None = None
) -> str | None:
    """:func:`check_schema` on an open connection (for ``SQLStorage.start``)."""
    build_tables(prefix, schema)
    revision = _read_revision(conn, prefix, schema)
    _refuse_unknown(revision)
    return revision


# -- internals ----------------------------------------------------------------------


def _engine(url: str, busy_timeout: float = 120.0) -> Engine:
    target = sync_url(url)
    if not target.startswith("sqlite"):
        return create_engine(target)
    engine = create_engine(target, connect_args={"timeout": busy_timeout})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL from the first migration on; transactions are ours, DDL included. Foreign
        # keys off: SQLite changes a table by rebuilding it, and dropping the old one
        # would otherwise cascade into every row that references it (a migration that
        # rebuilds checks the keys afterwards).
        prepare_sqlite(dbapi_connection, busy_timeout, foreign_keys=False)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock first, or wait

    return engine


def _lock_key(prefix: str, schema: str | None) -> int:
    """A stable signed 64-bit advisory-lock key for this schema and prefix."""
    digest = hashlib.blake2b(f"stepflow-migrate:{schema or ''}:{prefix}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


@contextmanager
def _locked(engine: Engine, prefix: str, schema: str | None) -> Iterator[Connection]:
    """One transaction holding the migration lock; committed when the block ends."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_lock_key(prefix, schema))))
            if schema is not None and not inspect(conn).has_schema(schema):
                conn.execute(CreateSchema(schema))
        yield conn


def _read_revision(conn: Connection, prefix: str, schema: str | None) -> str | None:
    context = MigrationContext.configure(
        conn,
        opts={"version_table": version_table_name(prefix), "version_table_schema": schema},
    )
    heads = context.get_current_heads()
    return heads[0] if heads else None


def _known_revisions() -> set[str]:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return {rev.revision for rev in script.walk_revisions()}


def _refuse_unknown(revision: str | None) -> None:
    if revision is not None and revision not in _known_revisions():
        raise SchemaTooNew(revision)


def _config(conn: Connection, prefix: str, schema: str | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes.update(connection=conn, stepflow_prefix=prefix, stepflow_schema=schema)
    return config
