"""Every core test runs once per storage backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..backends import selected_backends, storage_factory
from . import kit


@pytest.fixture(autouse=True, params=selected_backends())
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with storage_factory(request.param, tmp_path, request) as factory:
        kit.STORAGE["factory"] = factory
        yield request.param
