"""Item-step transitions per second, on the in-memory, SQLite or PostgreSQL storage.

An item-step transition is one item finishing one step (processed and passed on). Two
shapes, each timed from job creation until every job is final:

* batch:    1 job  x 10,000 items x 6 automatic no-op steps (60,000 transitions)
* workflow: 1,000 jobs x 1 item  x 6 automatic no-op steps  (6,000 transitions)

Run: ``.venv/bin/python benchmarks/bench_transitions.py [--backend memory|sqlite|postgres]
[--repeat 3] [--items N] [--jobs N]``. SQLite runs on a fresh file (WAL, synchronous=FULL);
PostgreSQL in a fresh schema of ``--postgres-url``. Prints the median and min-max of the
repetitions, with one process and its in-process workers. This is a benchmark, not a test.

Design decision: a one-file check of the transition rate for a quick look while working
on the engine, with none of the suite's machinery (no child processes, budgets or
peers); the suite's W1 and W2 (``suite.py``) are the reference figures. Every run gets
a new database, removed when it ends.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from _databases import drop_schema
from stepflow import Handlers, JobStatus, Orchestrator, Pipeline
from stepflow.ports import Storage

STEPS = 6


def noop_pipeline() -> Pipeline:
    return Pipeline.load(
        {
            "name": "noop",
            "steps": [{"key": f"s{n}", "handler": "noop", "concurrency": 64} for n in range(STEPS)],
        }
    )


async def noop(ctx: Any) -> None:
    return None


@contextmanager
def fresh_storage(backend: str, postgres_url: str) -> Iterator[Storage | None]:
    """A storage on a new SQLite file or PostgreSQL schema, removed afterwards."""
    if backend == "memory":
        yield None
        return
    from stepflow.storage.sql import SQLStorage

    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="stepflow-bench-"))
        try:
            yield SQLStorage(str(folder / "bench.db"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield SQLStorage(postgres_url, schema=schema)
    finally:
        drop_schema(postgres_url, schema)


async def run(
    jobs: int, items_per_job: int, storage: Storage | None = None, workers: int = 64
) -> float:
    handlers = Handlers()
    handlers.add("noop", noop)
    async with Orchestrator(
        storage, handlers=handlers, pipelines=[noop_pipeline()], max_concurrency=workers
    ) as orch:
        started = time.perf_counter()
        ids = []
        for j in range(jobs):
            job = await orch.create_job(
                "noop", [{"key": f"j{j}i{i}"} for i in range(items_per_job)]
            )
            ids.append(job.id)
        for job_id in ids:
            snap = await orch.wait(job_id, timeout=600)
            assert snap.job.status is JobStatus.COMPLETED, snap.job.status
        elapsed = time.perf_counter() - started
    return jobs * items_per_job * STEPS / elapsed


def report(name: str, rates: list[float]) -> None:
    print(
        f"{name:<44} median {statistics.median(rates):>9,.0f} transitions/s "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}, n={len(rates)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=64, help="handlers run at once")
    parser.add_argument("--backend", choices=["memory", "sqlite", "postgres"], default="memory")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    name = args.backend

    def once(jobs: int, items: int) -> float:
        with fresh_storage(name, args.postgres_url) as storage:
            return anyio.run(run, jobs, items, storage, args.workers)

    batch = [once(1, args.items) for _ in range(args.repeat)]
    report(f"{name} batch: 1 job x {args.items:,} items x {STEPS} steps", batch)
    flow = [once(args.jobs, 1) for _ in range(args.repeat)]
    report(f"{name} workflow: {args.jobs:,} jobs x 1 item x {STEPS} steps", flow)


if __name__ == "__main__":
    main()
