"""Fresh databases and ``stepflow worker`` processes for one benchmark run.

Design decision: every run gets a database of its own — a new SQLite file (WAL,
synchronous=FULL, stepflow's defaults) or a new PostgreSQL schema — so no run reads
another's rows, and the suite can remove it even when the run was killed (the run
announces it with a ``cleanup`` line first). Runs that use worker processes watch the
database with plain SQL on their own connection, so finding out that the work is done
costs the workers nothing beyond one indexed count now and then.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _protocol import emit

__all__ = ["BENCH_DIR", "Database", "child_pythonpath", "drop_schema", "worker_processes"]

BENCH_DIR = Path(__file__).resolve().parent


def child_pythonpath() -> str:
    """``PYTHONPATH`` for a process the suite starts: the caller's own path first (a
    checkout under test runs its code in every process), then this folder."""
    return os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(BENCH_DIR)) if p)


TERMINAL = ("completed", "failed", "cancelled")
PREFIX = "stepflow_"


def drop_schema(postgres_url: str, schema: str) -> None:
    """Remove a run's PostgreSQL schema and everything in it."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Database:
    """One run's database: ``memory``, ``sqlite`` or ``postgres``."""

    kind: str
    postgres_url: str
    path: Path | None = None
    schema: str | None = None
    _conn: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def fresh(cls, kind: str, postgres_url: str) -> Database:
        db = cls(kind, postgres_url)
        if kind == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="stepflow-bench-"))
            emit("cleanup", folder=str(folder))
            db.path = folder / "bench.db"
        elif kind == "postgres":
            import psycopg

            db.schema = f"bench_{uuid.uuid4().hex[:12]}"
            emit("cleanup", postgres_url=postgres_url, schema=db.schema)
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{db.schema}"')
        elif kind != "memory":
            raise ValueError(f"unknown backend {kind!r}")
        return db

    @property
    def url(self) -> str:
        return str(self.path) if self.kind == "sqlite" else self.postgres_url

    def storage(self) -> Any:
        """A new stepflow storage on this database (``None``: the in-memory default)."""
        if self.kind == "memory":
            return None
        from stepflow.storage.sql import SQLStorage

        return SQLStorage(self.url, schema=self.schema)

    def _table(self, name: str) -> str:
        return f'"{self.schema}".{PREFIX}{name}' if self.schema else f"{PREFIX}{name}"

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._lock:  # the run's event loop and its helper threads share it
            if self._conn is None:
                self._conn = self._connect()
            marker = "?" if self.kind == "sqlite" else "%s"
            rows: list[tuple[Any, ...]] = self._conn.execute(
                sql.replace("%s", marker), params
            ).fetchall()
            return rows

    def _connect(self) -> Any:
        if self.kind == "sqlite":
            return sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        import psycopg

        return psycopg.connect(self.postgres_url, autocommit=True)

    def terminal_jobs(self) -> int:
        """How many jobs are final (completed, failed or cancelled)."""
        marks = ", ".join(["%s"] * len(TERMINAL))
        sql = f"SELECT count(*) FROM {self._table('jobs')} WHERE status IN ({marks})"
        return int(self._query(sql, *TERMINAL)[0][0])

    def finished_visits(self) -> int:
        """How many item-step visits have finished (the transitions committed so far)."""
        sql = f"SELECT count(*) FROM {self._table('visits')} WHERE finished_at IS NOT NULL"
        return int(self._query(sql)[0][0])

    def visits(self, step: str, status: str) -> int:
        sql = f"SELECT count(*) FROM {self._table('visits')} WHERE step = %s AND status = %s"
        return int(self._query(sql, step, status)[0][0])

    def output(self, item_id: str, step: str) -> Any:
        """A visit's stored output (JSON text or a decoded value), or ``None``."""
        sql = f"SELECT output FROM {self._table('visits')} WHERE item_id = %s AND step = %s"
        rows = self._query(sql, item_id, step)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def remove(self) -> None:
        """Close the watch connection and delete the database."""
        self.close()
        if self.path is not None:
            shutil.rmtree(self.path.parent, ignore_errors=True)
        if self.schema is not None:
            drop_schema(self.postgres_url, self.schema)


def _worker_command() -> list[str]:
    script = Path(sys.executable).with_name("stepflow")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from stepflow.cli import main; main()"]


@contextmanager
def worker_processes(db: Database, count: int, timeout: float = 60.0) -> Iterator[None]:
    """Run ``count`` ``stepflow worker --app bench_app:app`` processes until the block ends.

    Waits until every worker says it is running; on exit sends SIGTERM and waits.
    """
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}  # bench_app lives in BENCH_DIR
    command = [*_worker_command(), "worker", "--app", "bench_app:app"]
    command += ["--database-url", db.url, "--grace", "5"]
    if db.schema:
        command += ["--schema", db.schema]
    procs: list[subprocess.Popen[str]] = []
    ready = threading.Semaphore(0)

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "running on" in line:
                ready.release()

    try:
        for _ in range(count):
            proc = subprocess.Popen(
                command,
                cwd=BENCH_DIR,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            procs.append(proc)
            threading.Thread(target=read, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        for _ in range(count):
            if not ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise RuntimeError("stepflow worker processes did not start in time")
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
