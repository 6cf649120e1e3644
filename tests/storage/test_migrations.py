"""Shipped migrations: they build exactly ``build_tables()``, in stepflow's own version
table, one migrator at a time, and refuse a database from a newer stepflow."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from stepflow import InvalidInput, StepflowError
from stepflow._cli_db import db_app
from stepflow.storage.sql import SQLStorage, build_tables
from stepflow.storage.sql.migrate import (
    HEAD,
    MIGRATIONS_DIR,
    SchemaTooNew,
    check_schema,
    check_schema_on,
    current_revision,
    sync_url,
    upgrade,
    version_table_name,
)
from stepflow.storage.sql.tables import VISIT_STATUS_INDEXES

from ..backends import postgres_schema

Database = tuple[str, str | None]  # (url, schema)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}", None
        return
    url = request.getfixturevalue("postgres_url")
    with postgres_schema(url) as schema:
        yield url, schema


def _differences(url: str, prefix: str, schema: str | None, metadata: sa.MetaData) -> list[Any]:
    version = version_table_name(prefix)

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        if type_ == "schema":
            return name == schema
        return not (type_ == "table" and name == version)

    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_name": include_name,
                    "include_schemas": schema is not None,
                    "compare_type": True,
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _table_names(url: str, schema: str | None) -> set[str]:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names(schema=schema))
    finally:
        engine.dispose()


@pytest.mark.parametrize("prefix", ["stepflow_", "app_sf_", ""])
def test_migrated_database_equals_metadata(database: Database, prefix: str) -> None:
    """An empty database upgraded to head has exactly the tables ``build_tables`` defines."""
    url, schema = database
    assert upgrade(url, prefix=prefix, schema=schema) == HEAD
    metadata = build_tables(prefix, schema).metadata
    assert _differences(url, prefix, schema, metadata) == []


def test_comparison_sees_a_difference(database: Database) -> None:
    """The equality check is not vacuous: an extra column in the metadata is reported."""
    url, schema = database
    upgrade(url, schema=schema)
    tables = build_tables(schema=schema)
    tables.jobs.append_column(sa.Column("extra", sa.Integer))
    diffs = _differences(url, "stepflow_", schema, tables.metadata)
    assert [d[0] for d in diffs] == ["add_column"]


@pytest.mark.parametrize("prefix", ["stepflow_", "app_sf_"])
def test_version_table_is_prefixed(database: Database, prefix: str) -> None:
    """The version table is ``<prefix>alembic_version``, in the schema; no ``alembic_version``."""
    url, schema = database
    upgrade(url, prefix=prefix, schema=schema)
    names = _table_names(url, schema)
    assert f"{prefix}alembic_version" in names
    assert "alembic_version" not in names
    assert current_revision(url, prefix=prefix, schema=schema) == HEAD


def test_version_table_stays_in_its_schema(postgres_url: str) -> None:
    """On PostgreSQL nothing lands in the default schema when a schema is given."""
    with postgres_schema(postgres_url) as schema:
        prefix = f"{schema}_"  # unique to this test
        upgrade(postgres_url, prefix=prefix, schema=schema)
        public = _table_names(postgres_url, None)
    assert not {name for name in public if name.startswith(prefix)}


def test_empty_prefix_does_not_use_the_hosts_version_table(tmp_path: Path) -> None:
    """With an empty prefix stepflow's version table is still its own."""
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    upgrade(url, prefix="")
    names = _table_names(url, None)
    assert "alembic_version_stepflow" in names
    assert "alembic_version" not in names


def test_head_constant_matches_the_scripts() -> None:
    """``HEAD`` is the head of the shipped revision scripts."""
    assert ScriptDirectory(str(MIGRATIONS_DIR)).get_heads() == [HEAD]


def test_upgrade_is_idempotent(database: Database) -> None:
    """Upgrading a database already at head does nothing and reports head."""
    url, schema = database
    upgrade(url, schema=schema)
    assert upgrade(url, schema=schema) == HEAD
    assert check_schema(url, schema=schema) == HEAD


def test_concurrent_upgrades(database: Database) -> None:
    """Two migrators at once both succeed and leave one head revision."""
    url, schema = database
    start = threading.Barrier(2)

    def migrate() -> str:
        start.wait()
        return upgrade(url, schema=schema)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(migrate) for _ in range(2)]
        results = [future.result() for future in futures]
    assert results == [HEAD, HEAD]
    engine = sa.create_engine(sync_url(url))
    table = sa.Table("stepflow_alembic_version", sa.MetaData(schema=schema), autoload_with=engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.version_num)).scalars().all() == [HEAD]
    engine.dispose()


def test_upgrade_stores_each_definition_once_and_keeps_every_row(database: Database) -> None:
    """Jobs stored by revision 0002 survive the upgrade whole: their items and events stay
    (the table rebuild cascades into nothing), each definition lands once in the
    definitions table, and the storage reads the jobs with their definitions."""
    url, schema = database
    upgrade(url, schema=schema, revision="0002")
    engine = sa.create_engine(sync_url(url))
    md = sa.MetaData(schema=schema)
    jobs, items, events = (
        sa.Table(f"stepflow_{name}", md, autoload_with=engine)
        for name in ("jobs", "items", "events")
    )
    first, second = {"name": "p", "steps": [{"key": "a"}]}, {"name": "q", "steps": []}
    owned = [("j1", "h1", first), ("j2", "h1", first), ("j3", "h2", second)]
    with engine.begin() as conn:
        for job_id, digest, definition in owned:
            conn.execute(
                jobs.insert().values(
                    id=job_id,
                    pipeline=definition["name"],
                    version="1",
                    definition_hash=digest,
                    definition=definition,
                    steps=[["a", True, 1]],
                    status="in_progress",
                    auto_process=True,
                    metadata={},
                    created_by="test",
                    created_at=1.0,
                    updated_at=1.0,
                    seq=1,
                    item_count=1,
                    started_steps=[],
                    step_statuses={"a": "in_progress"},
                )
            )
            conn.execute(
                items.insert().values(
                    id=f"{job_id}-i", job_id=job_id, key="k", data={}, created_at=1.0, position=1
                )
            )
            conn.execute(
                events.insert().values(
                    job_id=job_id, seq=1, type="job.created", at=1.0, actor="test", data={}
                )
            )
    engine.dispose()
    assert upgrade(url, schema=schema) == HEAD
    engine = sa.create_engine(sync_url(url))
    tables = build_tables(schema=schema)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(tables.definitions.c.hash, tables.definitions.c.definition)
        ).all()
        kept = [
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            for t in (tables.jobs, tables.items, tables.events)
        ]
        columns = {c["name"] for c in sa.inspect(conn).get_columns("stepflow_jobs", schema=schema)}
    engine.dispose()
    assert sorted(stored) == [("h1", first), ("h2", second)]
    assert kept == [3, 3, 3]
    assert "definition" not in columns

    async def read() -> list[Any]:
        storage = SQLStorage(url, schema=schema)
        await storage.start()
        try:
            return [(await storage.get_job(job_id)).definition for job_id, _, _ in owned]
        finally:
            await storage.aclose()

    assert anyio.run(read) == [first, first, second]


def test_sqlite_keeps_counters_and_events_in_their_key(tmp_path: Path) -> None:
    """On SQLite the counter and event tables are ``WITHOUT ROWID`` (one B-tree a row)
    after an upgrade, and the jobs, items and visits tables keep their rowid."""
    url = f"sqlite:///{tmp_path / 'keyed.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        query = "SELECT name, sql FROM sqlite_master WHERE type='table'"
        sql: dict[str, str] = {row[0]: row[1] for row in conn.exec_driver_sql(query)}
    engine.dispose()
    keyed = {name for name, text in sql.items() if "WITHOUT ROWID" in text.upper()}
    assert keyed == {"stepflow_counts", "stepflow_substep_counts", "stepflow_events"}


def test_status_indexes_hold_only_their_status(database: Database) -> None:
    """The claim, retry and lease indexes are partial, each over the one status its query
    reads, as ``VISIT_STATUS_INDEXES`` declares (the queries name the status literally)."""
    url, schema = database
    upgrade(url, schema=schema)
    engine = sa.create_engine(sync_url(url))
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for name, _columns, status in VISIT_STATUS_INDEXES:
            if engine.dialect.name == "sqlite":
                query = sa.text("SELECT sql FROM sqlite_master WHERE name = :name")
                params = {"name": f"stepflow_{name}"}
            else:
                query = sa.text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = :name AND schemaname = :s"
                )
                params = {"name": f"stepflow_{name}", "s": schema}
            found[status.value] = " ".join(conn.execute(query, params).scalar_one().split())
    engine.dispose()
    for status, definition in found.items():  # PostgreSQL writes ((status)::text = '...'::text)
        assert re.search(rf"WHERE \(*status\)*(::text)? = '{status}'", definition), definition


def _stamp(url: str, schema: str | None, revision: str) -> None:
    engine = sa.create_engine(sync_url(url))
    table = sa.Table("stepflow_alembic_version", sa.MetaData(schema=schema), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(sa.update(table).values(version_num=revision))
    engine.dispose()


def test_newer_schema_is_refused(database: Database) -> None:
    """A database stamped with an unknown (newer) revision raises SchemaTooNew naming it."""
    url, schema = database
    upgrade(url, schema=schema)
    _stamp(url, schema, "0999")
    with pytest.raises(SchemaTooNew, match="0999") as caught:
        check_schema(url, schema=schema)
    assert HEAD in str(caught.value)
    assert isinstance(caught.value, InvalidInput)
    assert isinstance(caught.value, StepflowError)
    with pytest.raises(SchemaTooNew, match="0999"):
        upgrade(url, schema=schema)


def test_never_migrated_database_has_no_revision(tmp_path: Path) -> None:
    """An empty database has no revision, and checking it is not an error."""
    assert check_schema(str(tmp_path / "empty.db")) is None


def test_check_schema_on_an_open_connection(tmp_path: Path) -> None:
    """The check on an open connection reads the revision and refuses a newer one."""
    path = tmp_path / "open.db"
    upgrade(str(path))
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert check_schema_on(conn) == HEAD
        _stamp(f"sqlite:///{path}", None, "0999")
        with engine.connect() as conn, pytest.raises(SchemaTooNew, match="0999"):
            check_schema_on(conn)
    finally:
        engine.dispose()


@pytest.mark.parametrize("field", ["prefix", "schema"])
@pytest.mark.parametrize("bad", ["x; drop table", "Bad-Name"])
def test_bad_identifiers_are_refused_before_connecting(
    tmp_path: Path, field: str, bad: str
) -> None:
    """A bad prefix or schema is InvalidInput, raised before any database is touched."""
    path = tmp_path / "untouched.db"
    unreachable = "postgresql://nobody:pw@127.0.0.1:1/none"
    for url in (str(path), unreachable):
        for call in (upgrade, current_revision, check_schema):
            with pytest.raises(InvalidInput, match="must match"):
                call(url, **{field: bad})
    assert not path.exists()


def test_sync_url_forms() -> None:
    """Async, plain and path URLs map to the synchronous drivers."""
    assert sync_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"
    assert sync_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert sync_url("postgresql+psycopg://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    with pytest.raises(InvalidInput, match="mysql"):
        sync_url("mysql://u@h/db")


def test_cli_upgrade_and_current_on_sqlite(tmp_path: Path) -> None:
    """``stepflow db upgrade`` migrates a SQLite file and ``current`` prints the revision."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    result = runner.invoke(db_app, ["current", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("none")
    result = runner.invoke(db_app, ["upgrade", "--database-url", url, "--prefix", "cli_"])
    assert result.exit_code == 0, result.output
    assert f"revision {HEAD} (head)" in result.output
    result = runner.invoke(db_app, ["current", "--database-url", url, "--prefix", "cli_"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{HEAD} (head)"


def test_cli_refuses_a_bad_prefix(tmp_path: Path) -> None:
    """A bad ``--prefix`` is reported as an error, with exit code 2."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(db_app, ["upgrade", "--database-url", url, "--prefix", "Bad-Name"])
    assert result.exit_code == 2
    assert "must match" in result.output


def test_cli_redacts_the_password_on_success(postgres_url: str) -> None:
    """On PostgreSQL the printed URL has its password masked."""
    url = sa.make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    with postgres_schema(postgres_url) as schema:
        result = CliRunner().invoke(db_app, ["upgrade", "--database-url", url, "--schema", schema])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert ":***@" in result.output


def test_cli_redacts_the_password_on_failure() -> None:
    """A database that cannot be reached is reported without the password."""
    url = "postgresql://someone:s3cret-pw@127.0.0.1:1/nothing"
    result = CliRunner().invoke(db_app, ["upgrade", "--database-url", url])
    assert result.exit_code == 1
    assert "s3cret-pw" not in result.output
    assert "someone:***@127.0.0.1:1/nothing" in result.output


def test_failed_upgrade_leaves_nothing(database: Database) -> None:
    """An upgrade that fails half-way is rolled back whole (transactional DDL)."""
    url, schema = database
    engine = sa.create_engine(sync_url(url))
    in_the_way = sa.Table(
        "stepflow_actions", sa.MetaData(schema=schema), sa.Column("x", sa.Integer)
    )
    with engine.begin() as conn:
        in_the_way.create(conn)
    engine.dispose()
    with pytest.raises(sa.exc.SQLAlchemyError):
        upgrade(url, schema=schema)
    assert _table_names(url, schema) == {"stepflow_actions"}
    assert current_revision(url, schema=schema) is None


def test_missing_postgres_schema_is_created(postgres_url: str) -> None:
    """Upgrading into a PostgreSQL schema that does not exist yet creates it."""
    with postgres_schema(postgres_url) as scratch:
        schema = f"{scratch}_new"
        try:
            assert upgrade(postgres_url, schema=schema) == HEAD
            assert "stepflow_jobs" in _table_names(postgres_url, schema)
        finally:
            engine = sa.create_engine(sync_url(postgres_url))
            with engine.begin() as conn:
                conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
            engine.dispose()
