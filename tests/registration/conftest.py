"""Fixtures and helpers for the registration plugin's tests.

Whole-pipeline tests ask for the ``backend`` fixture (``pytest.mark.usefixtures``) and
run once per storage backend: memory, SQLite (a temp file) and PostgreSQL (a fresh
schema, skipped when unreachable). :func:`running` builds its orchestrator on the
storage that fixture selected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from stepflow import Item, JobStatus, Orchestrator, Pipeline, Snapshot
from stepflow.ports import Storage
from stepflow.testing import FakeClock, MemoryStorage
from stepflow_registration import (
    FakeServices,
    SimulatedDecisions,
    SimulatedOperator,
    bind,
    fake_restaurants,
    load_pipeline,
)
from stepflow_registration.autopilot import all_items

from ..backends import selected_backends, storage_factory
from .watched import SteppingClock, WatchedStorage, settle

#: Every duration of the pipeline is multiplied by this in real-clock tests.
SCALE = 0.001
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
#: A bound on a whole run, to fail rather than hang; a SQL run of 18 restaurants takes
#: over 10 s on a busy two-core machine.
RUN_TIMEOUT = 60


#: Makes the storage a test runs on; set per test by the ``backend`` fixture.
STORAGE: dict[str, Callable[[FakeClock | None], Storage]] = {
    "factory": lambda clock: MemoryStorage(clock)
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=selected_backends())
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The storage backend of this test run: "memory", "sqlite" or "postgres"."""
    with storage_factory(request.param, tmp_path, request) as factory:
        STORAGE["factory"] = factory
        try:
            yield request.param
        finally:
            STORAGE["factory"] = lambda clock: MemoryStorage(clock)


def batch(backend: str, *, memory: int, sql: int) -> int:
    """How many restaurants a test runs: fewer on SQL, where each costs ~0.6 s of commits."""
    return memory if backend == "memory" else sql


def new_storage(clock: FakeClock | None = None) -> Storage:
    """A storage on the selected backend (the same database for every call in a test)."""
    return STORAGE["factory"](clock)


class Answers(SimulatedDecisions):
    """Deterministic answers: everything enabled, first candidate, per-key overrides."""

    def __init__(
        self,
        *,
        configs: Mapping[str, dict[str, Any]] | None = None,
        choices: Mapping[str, dict[str, Any] | None] | None = None,
        searches: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(0, no_match_rate=0.0, manual_entry_rate=0.0, override_rate=0.0)
        self.configs = dict(configs or {})
        self.choices = dict(choices or {})
        self.searches = dict(searches or {})

    async def search_again(self, item: Item) -> dict[str, Any] | None:
        if item.key in self.searches:
            return self.searches[item.key]
        return await super().search_again(item)

    async def choose_company(
        self, item: Item, candidates: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        if item.key in self.choices:
            return self.choices[item.key]
        return await super().choose_company(item, candidates)

    async def configure(
        self, items: list[Item], menus: Mapping[str, str | None]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        defaults, payloads = await super().configure(items, menus)
        for item in items:
            extra = self.configs.get(item.key, {})
            for section, value in extra.items():
                if isinstance(value, dict) and isinstance(payloads[item.id].get(section), dict):
                    payloads[item.id][section] = {**payloads[item.id][section], **value}
                else:
                    payloads[item.id][section] = value
        return defaults, payloads


_pipeline = functools.cache(load_pipeline)  # a frozen model: parse the YAML once


@asynccontextmanager
async def running(
    fakes: FakeServices, *, clock: FakeClock | None = None, scale: float = SCALE
) -> AsyncIterator[tuple[Orchestrator, Pipeline]]:
    """An orchestrator on the selected storage with the registration bound to ``fakes``."""
    pipeline = _pipeline(time_scale=scale)
    storage = new_storage(clock)
    if clock is not None and not isinstance(storage, MemoryStorage):
        storage = WatchedStorage(storage)  # so drive_on_clock can tell when it is quiet
    async with Orchestrator(
        storage,
        handlers=bind(fakes),
        pipelines=[pipeline],
        clock=clock,
        lease_seconds=30,
    ) as orch:
        yield orch, pipeline


async def start(orch: Orchestrator, pipeline: Pipeline, count: int) -> str:
    job = await orch.create_job(pipeline.name, fake_restaurants(count, seed=7))
    return job.id


async def drive(
    orch: Orchestrator, job_id: str, answers: Answers | None = None, *, retry: bool = False
) -> Snapshot:
    """Answer every person step (no operator retries by default) until nothing runs."""
    operator = SimulatedOperator(orch, job_id, answers or Answers(), retry_failed=retry)
    return await operator.run(timeout=RUN_TIMEOUT)


async def drive_on_clock(
    orch: Orchestrator,
    job_id: str,
    clock: FakeClock,
    answers: Answers | None = None,
    *,
    tick: float = 1.0,
) -> Snapshot:
    """Like :func:`drive`, moving a fake clock in steps of ``tick`` whenever all waits.

    With a :class:`SteppingClock` it moves straight to the first tick at which something
    wakes.
    """
    operator = SimulatedOperator(orch, job_id, answers or Answers(), retry_failed=False)
    with anyio.fail_after(RUN_TIMEOUT):
        while True:
            await settle(orch.storage)
            snapshot = await orch.snapshot(job_id)
            if snapshot.job.status in FINAL:
                return snapshot
            if not await operator.act(snapshot):
                clock.advance(tick * await _ticks_to_next_wake(orch, clock, tick))


async def _ticks_to_next_wake(orch: Orchestrator, clock: FakeClock, tick: float) -> int:
    """How many ticks until a sleeper or a retry is due (1 when that is not known).

    Skipping the ticks at which nothing wakes lands on the same instants as ticking one
    by one; on a SQL storage it saves a round of queries per tick.
    """
    if not isinstance(clock, SteppingClock):
        return 1
    due = [d for d in (clock.next_deadline(), await orch.storage.next_due()) if d is not None]
    if not due:
        return 1
    return max(1, math.ceil((min(due) - clock.now()) / tick - 1e-9))


async def by_key(orch: Orchestrator, job_id: str, step: str) -> dict[str, Item]:
    return {item.key: item for item in await all_items(orch, job_id, step)}
