"""The storage contract suite, run on every shipped backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepflow.ports import Clock, Storage
from stepflow.testing.contract import StorageContract

from ..backends import selected_backends, storage_factory


class TestShippedStorages(StorageContract):
    """Memory, SQLite and PostgreSQL each keep the storage contract."""

    @pytest.fixture(params=selected_backends())
    def make_storage(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> Iterator[Callable[[Clock], Storage]]:
        with storage_factory(request.param, tmp_path, request) as factory:
            yield factory
