"""Fixtures of the crash tests: a shared database per backend, and a worker pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..backends import postgres_schema, selected_backends
from .harness import Database, Workers

SHARED_BACKENDS = [b for b in selected_backends() if b != "memory"]


def _database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Database]:
    if backend == "sqlite":
        yield Database(str(tmp_path / "shared.db"))
        return
    url = request.getfixturevalue("postgres_url")
    with postgres_schema(url) as schema:
        yield Database(url, schema)


@pytest.fixture(params=SHARED_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh shared database: a SQLite file, or a PostgreSQL schema of its own."""
    yield from _database(request.param, tmp_path, request)


@pytest.fixture
def workers(database: Database, tmp_path: Path) -> Iterator[Workers]:
    """Starts worker processes on ``database``; none outlives the test."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with Workers(database, tmp_path / "ledger.txt", logs) as pool:
        yield pool
