"""The database's own limit: commits per second of stepflow's transaction shape.

Design decision: the shape is the smallest durable state change — update one row and
insert one row, then commit — on the same database and settings stepflow uses (SQLite
in WAL mode with synchronous=FULL; PostgreSQL with its default fsync), so every stepflow
figure can be read as a fraction (or, with group commit, a multiple) of what the
database can commit one change at a time. Each client updates its own row, so clients
contend for the commit, not for a row lock.

``python raw_limit.py sqlite3|sqlalchemy|psycopg [--clients N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _protocol import emit

__all__ = ["main"]

CREATE = (
    "CREATE TABLE counters (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)",
    (
        "CREATE TABLE log (id INTEGER PRIMARY KEY {auto}, client INTEGER NOT NULL, "
        "value INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)"
    ),
)
UPDATE = "UPDATE counters SET value = value + 1 WHERE id = {p}"
INSERT = "INSERT INTO log (client, value, at) VALUES ({p}, {p}, {p})"


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _sqlite_setup(path: Path, clients: int) -> None:
    conn = _sqlite_connect(path)
    for statement in CREATE:
        conn.execute(statement.format(auto=""))
    conn.executemany("INSERT INTO counters VALUES (?, 0)", [(c,) for c in range(clients)])
    conn.close()


def run_sqlite3(path: Path, seconds: float) -> int:
    """One client through the standard library's sqlite3."""
    conn = _sqlite_connect(path)
    update, insert = UPDATE.format(p="?"), INSERT.format(p="?")
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(update, (0,))
        conn.execute(insert, (0, done, time.time()))
        conn.execute("COMMIT")
        done += 1
    conn.close()
    return done


def _sqlalchemy_events(engine: Any) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _statements() -> tuple[Any, Any]:
    from sqlalchemy import text

    update = text("UPDATE counters SET value = value + 1 WHERE id = :c")
    insert = text("INSERT INTO log (client, value, at) VALUES (:c, :v, :a)")
    return update, insert


def run_sqlalchemy(path: Path, seconds: float) -> int:
    """One client through SQLAlchemy Core on the standard sqlite3 driver (stepflow's stack)."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{path}")
    _sqlalchemy_events(engine)
    update, insert = _statements()
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with engine.begin() as conn:
            conn.execute(update, {"c": 0})
            conn.execute(insert, {"c": 0, "v": done, "a": time.time()})
        done += 1
    engine.dispose()
    return done


def run_psycopg(url: str, schema: str, clients: int, seconds: float) -> int:
    """``clients`` threads, each with its own psycopg connection and row."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        for statement in CREATE:
            conn.execute(statement.format(auto="GENERATED ALWAYS AS IDENTITY"))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO counters VALUES (%s, 0)", [(c,) for c in range(clients)])
    counts = [0] * clients
    start = threading.Barrier(clients)
    update, insert = UPDATE.format(p="%s"), INSERT.format(p="%s")

    def client(index: int) -> None:
        with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
            start.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                with conn.transaction():
                    conn.execute(update, (index,))
                    conn.execute(insert, (index, counts[index], time.time()))
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("driver", choices=["sqlite3", "sqlalchemy", "psycopg"])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.driver == "psycopg":
        from _databases import drop_schema

        schema = f"bench_raw_{uuid.uuid4().hex[:12]}"
        emit("cleanup", postgres_url=args.postgres_url, schema=schema)
        try:
            commits = run_psycopg(args.postgres_url, schema, args.clients, args.seconds)
        finally:
            drop_schema(args.postgres_url, schema)
    else:
        folder = Path(tempfile.mkdtemp(prefix="stepflow-raw-"))
        emit("cleanup", folder=str(folder))
        path = folder / "raw.db"
        try:
            _sqlite_setup(path, 1)
            run = run_sqlite3 if args.driver == "sqlite3" else run_sqlalchemy
            commits = run(path, args.seconds)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    emit("result", commits=commits, seconds=args.seconds, rate=commits / args.seconds)


if __name__ == "__main__":
    main()
