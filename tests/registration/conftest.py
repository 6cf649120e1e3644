"""Fixtures and helpers for the registration plugin's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from stepflow import Item, JobStatus, Orchestrator, Pipeline, Snapshot
from stepflow.testing import FakeClock
from stepflow_registration import (
    FakeServices,
    SimulatedDecisions,
    SimulatedOperator,
    bind,
    fake_restaurants,
    load_pipeline,
)
from stepflow_registration.autopilot import all_items

#: Every duration of the pipeline is multiplied by this in real-clock tests.
SCALE = 0.001
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@asynccontextmanager
async def running(
    fakes: FakeServices, *, clock: FakeClock | None = None, scale: float = SCALE
) -> AsyncIterator[tuple[Orchestrator, Pipeline]]:
    """An orchestrator on memory storage with the registration bound to ``fakes``."""
    pipeline = load_pipeline(time_scale=scale)
    async with Orchestrator(
        handlers=bind(fakes), pipelines=[pipeline], clock=clock, lease_seconds=30
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
    return await operator.run(timeout=15)


async def drive_on_clock(
    orch: Orchestrator,
    job_id: str,
    clock: FakeClock,
    answers: Answers | None = None,
    *,
    tick: float = 1.0,
) -> Snapshot:
    """Like :func:`drive`, moving a fake clock by ``tick`` whenever everything waits."""
    operator = SimulatedOperator(orch, job_id, answers or Answers(), retry_failed=False)
    with anyio.fail_after(15):
        while True:
            await anyio.wait_all_tasks_blocked()
            snapshot = await orch.snapshot(job_id)
            if snapshot.job.status in FINAL:
                return snapshot
            if not await operator.act(snapshot):
                clock.advance(tick)


async def by_key(orch: Orchestrator, job_id: str, step: str) -> dict[str, Item]:
    return {item.key: item for item in await all_items(orch, job_id, step)}
