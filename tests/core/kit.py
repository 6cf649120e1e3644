"""Small builders shared by the core tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

from stepflow import Handlers, Orchestrator, Pipeline
from stepflow.ports import Storage
from stepflow.testing import FakeClock, MemoryStorage


class Choice(BaseModel):
    value: int
    note: str = ""


def pipeline(*steps: dict[str, Any], name: str = "p") -> Pipeline:
    return Pipeline.load({"name": name, "steps": list(steps)})


def auto(key: str, handler: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"key": key, "handler": handler or key, **extra}


def handlers(**funcs: Callable[[Any], Any]) -> Handlers:
    registry = Handlers()
    for key, func in funcs.items():
        registry.add(key, func)
    registry.action("choice", Choice)
    return registry


async def ok(ctx: Any) -> dict[str, Any]:
    return {"step": ctx.step.key, "key": ctx.item_key}


def items(n: int) -> list[dict[str, Any]]:
    return [{"key": f"i{k}", "data": {"n": k}} for k in range(n)]


#: Makes the storage each test runs on; set per test by the ``backend`` fixture.
STORAGE: dict[str, Callable[[FakeClock | None], Storage]] = {
    "factory": lambda clock: MemoryStorage(clock)
}


@asynccontextmanager
async def running(
    *pipelines: Pipeline, registry: Handlers, clock: FakeClock | None = None, **kwargs: Any
) -> AsyncIterator[Orchestrator]:
    storage = STORAGE["factory"](clock)
    async with Orchestrator(
        storage, handlers=registry, pipelines=pipelines, clock=clock, **kwargs
    ) as orch:
        yield orch


async def ids_at(
    orch: Orchestrator, job_id: str, step: str, status: str | None = None
) -> list[str]:
    page = await orch.list_items(job_id, step, status=status, limit=1000)
    return [item.id for item in page.items]
