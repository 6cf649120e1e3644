"""One of the SQLite writer processes: create jobs, act on them and work, for a while.

Design decision: every call this process makes to stepflow is wrapped, and whatever
escapes one — "database is locked" above all — is counted, not fatal, so the parent
sees every error that reached a caller, and the process still finishes its jobs.
Run as ``python -m tests.crash.writer DATABASE SECONDS REPORT``; the report is JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from stepflow import JobStatus, Orchestrator
from stepflow.storage.sql import SQLStorage

from .crash_app import app

__all__ = ["ITEMS", "main"]

T = TypeVar("T")
ITEMS = 3
#: Jobs each process drives at once, besides its own engine's workers.
LANES = 3
#: Bounds each wait for a job; generous, four processes share two cores.
WAIT = 300.0


class Writer:
    """One process's share of the work, and every error a call of it raised."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.actor = f"writer-{os.getpid()}"
        self.created: list[str] = []
        self.errors: list[str] = []
        self.calls = 0

    async def call(self, operation: Awaitable[T]) -> T | None:
        self.calls += 1
        try:
            return await operation
        except Exception as exc:  # noqa: BLE001 - every error reaching a caller is the finding
            self.errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            return None

    async def one_job(self, n: int) -> None:
        """Create a job, wait for its review, and pass it on (the people's part)."""
        made = [{"key": f"{self.actor}-{n}-{i}"} for i in range(ITEMS)]
        job = await self.call(self.orch.create_job("writers", made, actor=self.actor))
        if job is None:
            return
        self.created.append(job.id)
        await self.review(job.id)

    async def review(self, job_id: str) -> bool:
        """Pass every item waiting at the review step; whether the job is then done."""
        snapshot = await self.call(self.orch.wait(job_id, timeout=WAIT))
        if snapshot is None or snapshot.job.status is JobStatus.COMPLETED:
            return snapshot is not None
        await self.call(self.orch.pass_items(job_id, "review", actor=self.actor))
        return False

    async def finish(self) -> None:
        """Review again until every job this process made has completed."""
        for job_id in self.created:
            for _ in range(100):
                if await self.review(job_id):
                    break


async def run(database: str, seconds: float) -> dict[str, Any]:
    async with app.orchestrator(SQLStorage(database)) as orch:
        writer = Writer(orch)
        end = time.monotonic() + seconds

        async def loop(lane: int) -> None:
            n = 0
            while time.monotonic() < end:
                n += 1
                await writer.one_job(lane * 1_000_000 + n)

        async with anyio.create_task_group() as tg:
            for lane in range(LANES):
                tg.start_soon(loop, lane)
        await writer.finish()
        return {"created": writer.created, "errors": writer.errors, "calls": writer.calls}


def main() -> None:
    database, seconds, report = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    result = anyio.run(run, database, seconds)
    report.write_text(json.dumps(result))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
