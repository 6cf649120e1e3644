"""Talking to the database driver directly, for the SQL storage's hot paths.

Design decision: SQLAlchemy builds every statement (so identifiers are quoted by the
dialect and nothing is formatted into SQL by hand), but the statements a group commit
runs thousands of times are compiled once and then sent to the driver as they are:
inserts and updates as ``executemany`` of plain tuples, selects returning plain tuples
that are turned into records here. On PostgreSQL, statements that do not wait for each
other's answers are sent together in psycopg's pipeline mode — a batch's writes and
the reads that complete its claims cost one round trip. A list of ids is bound as one
parameter (a JSON array on SQLite, an array on PostgreSQL), so a statement does not
change with the number of ids. JSON goes through orjson both ways.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    String,
    any_,
    bindparam,
    event,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, DisconnectionError

from ..._jsonsafe import dumps_text, loads
from ..._records import VisitRecord
from ..._states import ItemStatus

__all__ = ["DriverStatements", "Read", "decode_json", "jsonb_parameter", "ping_when_idle"]

T = TypeVar("T")

#: A read for :meth:`DriverStatements._raw_selects`: its name, how to build it, and
#: its parameters.
Read = tuple[str, Callable[[], Any], Mapping[str, Any]]

_PING_AFTER_IDLE = 1.0  #: a pooled connection idle this long is checked before use


class DriverStatements:
    """Statements compiled once and run on the driver (mixed into ``SQLStorage``)."""

    is_sqlite: bool
    _statements: dict[str, Any]
    _json_parameter: Callable[[Any], Any]
    _json_decode: Callable[[Any], Any]

    @property
    def engine(self) -> Engine:
        raise NotImplementedError

    def _insert_many(self, conn: Connection, table: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (dicts by column name) with one driver-level ``executemany``.

        The statement text is made once from the table (identifiers quoted by the
        dialect); values go to the driver as tuples, JSON columns encoded here. For the
        thousands of event and visit rows of a busy group commit this skips
        SQLAlchemy's per-row parameter processing, the largest cost left on that path.
        """
        names = self._columns(table)
        sql = self._stmt(f"raw-insert-{table.name}", lambda: self._raw_insert(table, names))
        self._run_raw(conn, sql, table, names, rows)

    def _columns(self, table: Any) -> tuple[str, ...]:
        """``table``'s column names, in order (read once per table)."""
        return self._stmt(
            f"columns-{table.name}", lambda: tuple(column.name for column in table.columns)
        )

    def _raw_select(
        self, conn: Connection, name: str, build: Callable[[], Any], params: Mapping[str, Any]
    ) -> Sequence[Any]:
        """Run the select ``build`` gives (built and compiled once) on the driver itself:
        rows come back as plain tuples in the select's column order, JSON columns as the
        driver returns them (text on SQLite, decoded on PostgreSQL). For the hot reads of
        a group commit this skips SQLAlchemy's per-row result processing."""
        sql, names, defaults = self._compiled_select(name, build)
        values = {**defaults, **params}
        args: Any = tuple(values[n] for n in names) if names else values
        if self.is_sqlite:
            rows: Sequence[Any] = self._on_cursor(conn, sql, args, many=False).fetchall()
            return rows
        return conn.exec_driver_sql(sql, args).fetchall()

    def _raw_selects(
        self,
        conn: Connection,
        reads: Sequence[Read],
        before: Callable[[], None] | None = None,
        *,
        last: bool = False,
    ) -> list[Sequence[Any]]:
        """Several :meth:`_raw_select` reads that do not depend on each other's results,
        after ``before`` (writes whose results nobody reads). PostgreSQL gets it all at
        once and answers in one round trip (pipeline mode); the statements still run in
        order, so locks are taken, and writes seen, in the order given. ``last``: these
        are the transaction's last statements, and PostgreSQL's COMMIT goes with them
        (see :meth:`_commit_in_pipeline`)."""
        if self.is_sqlite or len(reads) + (before is not None) < 2:
            if before is not None:
                before()
            return [self._raw_select(conn, name, build, params) for name, build, params in reads]
        raw: Any = conn.connection.driver_connection
        cursors = []
        with self._pipelined(conn):
            if before is not None:
                before()
            for name, build, params in reads:
                sql, _, defaults = self._compiled_select(name, build)
                cursor = raw.cursor()
                cursor.execute(sql, {**defaults, **params})
                cursors.append(cursor)
            if last:
                self._commit_in_pipeline(conn)
        return [cursor.fetchall() for cursor in cursors]

    def _commit_in_pipeline(self, conn: Connection) -> None:
        """Send COMMIT behind a transaction's last statements, inside their pipeline: the
        commit costs no round trip of its own. Its outcome arrives with theirs (a failed
        commit raises from the pipeline, before anything is acknowledged), and the
        transaction's own commit afterwards finds nothing left to do. (SQLite has no
        pipeline: its transaction commits as usual.)"""
        if not self.is_sqlite:
            conn.connection.driver_connection.cursor().execute("COMMIT")  # type: ignore[union-attr]

    def _compiled_select(
        self, name: str, build: Callable[[], Any]
    ) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """The select ``build`` gives, compiled on first use (see :meth:`_compiled`)."""
        return self._stmt(f"raw-select-{name}", lambda: self._compiled(build()))

    def _compiled(self, query: Any) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """``query`` as the driver's SQL, the order of its positional parameters (SQLite;
        empty for PostgreSQL's named ones) and the values bound in it."""
        compiled = query.compile(dialect=self.engine.dialect)
        names = tuple(compiled.positiontup or ()) if self.is_sqlite else ()
        return compiled.string, names, dict(compiled.params)

    def _among(self, column: Any, name: str = "ids") -> Any:
        """``column`` is one of the values bound as ``name`` (give them by ``_listed``):
        one fixed statement for any number of values, so it is compiled once."""
        if self.is_sqlite:
            listed: Any = select(literal_column("value"))
            listed = listed.select_from(func.json_each(bindparam(name)))
            return column.in_(listed.scalar_subquery())
        return column == any_(bindparam(name, type_=ARRAY(String)))

    def _listed(self, values: Collection[str]) -> Any:
        """``values`` as ``_among`` binds them (sorted: rows lock in one order)."""
        ordered = sorted(values)
        return dumps_text(ordered) if self.is_sqlite else ordered

    def _visit_from_raw(self, row: Sequence[Any]) -> VisitRecord:
        """A visit from a raw row of every visits column, in table order."""
        decode = self._json_decode
        (
            id_,
            job_id,
            item_id,
            step,
            status,
            _ready,
            _concurrency,
            position,
            attempts,
            retry_base,
            token,
            next_attempt_at,
            lease_owner,
            lease_expires_at,
            input_,
            output,
            error,
            reason,
            substeps,
            progress,
            created_at,
            updated_at,
            started_at,
            finished_at,
        ) = row
        return VisitRecord(
            id_,
            job_id,
            item_id,
            step,
            ItemStatus(status),
            created_at,
            updated_at,
            position=position,
            attempts=attempts,
            retry_base=retry_base,
            token=token,
            next_attempt_at=next_attempt_at,
            lease_owner=lease_owner,
            lease_expires_at=lease_expires_at,
            input=decode(input_),
            output=decode(output),
            error=decode(error),
            reason=reason,
            substeps=decode(substeps) or {},
            progress=decode(progress),
            started_at=started_at,
            finished_at=finished_at,
        )

    def _run_raw(
        self,
        conn: Connection,
        sql: str,
        table: Any,
        names: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """Run ``sql`` once per row with the row's values for ``names``, in that order;
        JSON columns encoded here, as the driver takes them. Every row has every name."""
        take, json_at = self._stmt(
            f"raw-params-{table.name}-{','.join(names)}",
            lambda: (
                itemgetter(*names),
                tuple(i for i, n in enumerate(names) if isinstance(table.c[n].type, JSON)),
            ),
        )
        encode = self._encode_json
        params: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(take(row))
            for i in json_at:
                values[i] = encode(values[i])
            params.append(tuple(values))
        if self.is_sqlite:
            self._on_cursor(conn, sql, params, many=True)
        else:
            conn.exec_driver_sql(sql, params)

    @staticmethod
    def _on_cursor(conn: Connection, sql: str, params: Any, *, many: bool) -> Any:
        """Run ``sql`` on a cursor of sqlite3 itself, in ``conn``'s transaction.

        SQLAlchemy's execution context (its events and the result metadata it builds
        for every statement) costs more than a small SQLite statement does, and a group
        commit runs a dozen of them. A driver error is raised as SQLAlchemy raises it
        (``IntegrityError``, ``OperationalError``...), so callers cannot tell the paths
        apart. (SQLite has no connection to lose; PostgreSQL keeps SQLAlchemy's path,
        which also notices a dead connection.)
        """
        dbapi_error = conn.dialect.loaded_dbapi.Error
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
        except dbapi_error as exc:
            raise DBAPIError.instance(sql, params, exc, dbapi_error, dialect=conn.dialect) from exc
        return cursor

    def _marker(self) -> str:
        """The driver's parameter placeholder."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    def _raw_insert(self, table: Any, names: Sequence[str]) -> str:
        """``INSERT INTO <table> (<names>) VALUES (...)`` for the driver, quoted."""
        preparer = self.engine.dialect.identifier_preparer
        return (
            f"INSERT INTO {preparer.format_table(table)} "
            f"({', '.join(preparer.quote(name) for name in names)}) "
            f"VALUES ({', '.join(self._marker() for _ in names)})"
        )

    def _raw_update(self, table: Any, names: Sequence[str]) -> str:
        """``UPDATE <table> SET <names> WHERE id = ?`` for the driver, quoted."""
        preparer = self.engine.dialect.identifier_preparer
        marker = self._marker()
        assignments = ", ".join(f"{preparer.quote(name)} = {marker}" for name in names)
        return (
            f"UPDATE {preparer.format_table(table)} SET {assignments} "
            f"WHERE {preparer.quote('id')} = {marker}"
        )

    def _raw_add(self, table: Any) -> str:
        """``INSERT ... ON CONFLICT (<key>) DO UPDATE SET n = n + excluded.n``: add to a
        counter row, creating it at the first count (the same SQL on both databases)."""
        preparer = self.engine.dialect.identifier_preparer
        names = self._columns(table)
        key = ", ".join(preparer.quote(c.name) for c in table.primary_key.columns)
        n = preparer.quote("n")
        return (
            self._raw_insert(table, names)
            + f" ON CONFLICT ({key}) DO UPDATE SET {n} = {preparer.format_table(table)}.{n}"
            f" + excluded.{n}"
        )

    def _encode_json(self, value: Any) -> Any:
        if value is None:
            return None  # SQL NULL, as the JSON columns store it (``none_as_null``)
        return self._json_parameter(value)

    def _stmt(self, name: str, build: Callable[[], T]) -> T:
        """The statement called ``name``, built on first use and reused after.

        Building a SQLAlchemy statement costs several times what running it does; a
        statement with bound (and, for lists, expanding) parameters is built once.
        """
        found = self._statements.get(name)
        if found is None:
            found = self._statements[name] = build()
        return found

    @contextmanager
    def _pipelined(self, conn: Connection) -> Iterator[None]:
        """On PostgreSQL, send the statements run inside without waiting for each reply
        (psycopg's pipeline mode): a batch's writes cost one round trip, not one each.
        A statement the server refused raises here, as SQLAlchemy raises it elsewhere."""
        if self.is_sqlite:
            yield
            return
        raw = conn.connection.driver_connection
        dialect = conn.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        try:
            with raw.pipeline():  # type: ignore[union-attr]
                yield
        except dbapi_error as exc:
            invalidated = dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
            raise DBAPIError.instance(
                "(pipelined writes)",
                None,
                exc,
                dbapi_error,
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from exc


def ping_when_idle(engine: Engine) -> None:
    """Check a pooled PostgreSQL connection before use only when it sat idle for
    ``_PING_AFTER_IDLE`` seconds: a busy process saves a round trip per transaction,
    and a dead connection found by the check is replaced before anything runs on it
    (one found later fails that transaction: reads run again, writes are offered
    again by the engine)."""

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("stepflow_returned", -math.inf) < _PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure at all: the pool opens a new connection
            raise DisconnectionError(f"connection check failed: {type(exc).__name__}") from exc

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["stepflow_returned"] = time.monotonic()


def decode_json(value: Any) -> Any:
    return None if value is None else loads(value)


def jsonb_parameter() -> Callable[[Any], Any]:
    from psycopg.types.json import Jsonb

    return lambda value: Jsonb(value, dumps_text)
