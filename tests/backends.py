"""Storage backends for parametrised tests: memory, SQLite (a temp file), PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stepflow.ports import Clock, Storage
from stepflow.testing import MemoryStorage

BACKENDS = ["memory", "sqlite", "postgres"]


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def storage_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[Clock | None], Storage]]:
    """Yield a function making a fresh storage of ``backend`` (one database per test)."""
    if backend == "memory":
        yield lambda clock: MemoryStorage(clock)
        return
    from stepflow.storage.sql import SQLStorage

    if backend == "sqlite":
        path = tmp_path / "stepflow.db"
        yield lambda clock: SQLStorage(str(path), clock=clock)
        return
    url = request.getfixturevalue("postgres_url")
    with postgres_schema(url) as schema:
        yield lambda clock: SQLStorage(url, schema=schema, clock=clock)


def selected_backends() -> list[str]:
    """Backends to run: all, or those named in STEPFLOW_TEST_BACKENDS (comma-separated)."""
    chosen = os.environ.get("STEPFLOW_TEST_BACKENDS")
    return [b for b in BACKENDS if not chosen or b in chosen.split(",")]
