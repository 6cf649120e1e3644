"""stepflow's workloads W1-W5, one run per process: ``python stepflow_workloads.py W1 ...``.

Design decision: each workload is timed from the first write (job creation) to the last
(every job final), on a fresh database, with handlers that do nothing, so the figure is
the library's own cost of durable state changes. An item-step transition is one item
finishing one step; a run prints its figures as protocol lines (see ``_protocol``).
This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import anyio

import bench_app
from _databases import Database, worker_processes
from _protocol import ProgressReporter, emit, monotonic_ns, peak_rss_mb, percentiles_ms
from stepflow import JobStatus, Orchestrator

__all__ = ["main"]

WAIT = 3600.0  # orchestrator waits are bounded by the suite's budget, not here


def orchestrator(db: Database, *, run_workers: bool = True, concurrency: int = 64) -> Orchestrator:
    return bench_app.app().orchestrator(
        db.storage(), max_concurrency=concurrency, run_workers=run_workers
    )


async def _ticking(reporter: ProgressReporter, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body`` while a task emits progress lines every second."""
    result: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def tick() -> None:
            while True:
                await anyio.sleep(reporter.every)
                reporter.tick(force=True)

        tg.start_soon(tick)
        result.append(await body())
        tg.cancel_scope.cancel()
    return result[0]


async def _until(check: Callable[[], bool], reporter: ProgressReporter, every: float) -> None:
    while not await anyio.to_thread.run_sync(check):
        reporter.tick()
        await anyio.sleep(every)


def _final(statuses: list[JobStatus]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for status in statuses:
        tally[status.value] = tally.get(status.value, 0) + 1
    return tally


CREATORS = 64  #: callers creating jobs at once, as many as LangGraph's runs at once


async def _create_all(orch: Orchestrator, jobs: int, items: int) -> list[str]:
    """Create ``jobs`` jobs of ``items`` items from ``CREATORS`` concurrent callers, as a
    service taking requests would; the ids come back in creation order."""
    ids: list[str] = [""] * jobs
    limit = anyio.Semaphore(CREATORS)

    async def one(j: int) -> None:
        async with limit:
            rows = [{"key": f"j{j}i{i}"} for i in range(items)]
            ids[j] = (await orch.create_job(bench_app.NOOP, rows)).id

    async with anyio.create_task_group() as tg:
        for j in range(jobs):
            tg.start_soon(one, j)
    return ids


async def flow(db: Database, jobs: int, items: int, workers: int) -> dict[str, Any]:
    """W1/W2: ``jobs`` jobs of ``items`` items through six no-op steps."""
    transitions = jobs * items * bench_app.STEPS
    in_process = workers == 0
    counter = (lambda: bench_app.calls[0]) if in_process else db.finished_visits
    reporter = ProgressReporter(counter)
    async with orchestrator(db, run_workers=in_process) as orch:
        with worker_processes(db, workers) if workers else nullcontext():
            reporter.restart()
            started = time.perf_counter()

            async def body() -> list[JobStatus]:
                ids = await _create_all(orch, jobs, items)
                if in_process:
                    return [(await orch.wait(i, timeout=WAIT)).job.status for i in ids]
                await _until(lambda: db.terminal_jobs() >= jobs, reporter, 0.02)
                return [(await orch.get_job(i)).status for i in ids]

            statuses = await _ticking(reporter, body)
            elapsed = time.perf_counter() - started
    return {
        "transitions": transitions,
        "elapsed_s": elapsed,
        "rate": transitions / elapsed,
        "jobs": _final(statuses),
        "incomplete": sum(status is not JobStatus.COMPLETED for status in statuses),
        "peak_rss_mb": peak_rss_mb(),
    }


def _stamped(db: Database, item_id: str) -> bool:
    """Whether step 4's handler has stored its start time for this item."""
    return db.output(item_id, bench_app.TIMED_STEP) is not None


async def human(db: Database, samples: int, cross: bool) -> dict[str, Any]:
    """W3: a person's approval at step 3 until step 4's handler starts."""
    latencies: list[int] = []
    reporter = ProgressReporter(lambda: len(latencies))
    async with orchestrator(db, run_workers=not cross) as orch:
        with worker_processes(db, 1) if cross else nullcontext():
            ids = [
                (await orch.create_job(bench_app.HUMAN, [{"key": f"p{n}"}])).id
                for n in range(samples)
            ]
            reporter.restart()
            if cross:
                await _until(
                    lambda: db.visits(bench_app.HUMAN_STEP, "awaiting_input") >= samples,
                    reporter,
                    0.05,
                )
            else:
                for job_id in ids:
                    await orch.wait(job_id, timeout=WAIT)

            async def body() -> None:
                for job_id in ids:
                    page = await orch.list_items(job_id, bench_app.HUMAN_STEP)
                    item_id = page.items[0].id
                    submitted = monotonic_ns()
                    await orch.submit(job_id, bench_app.HUMAN_STEP, {item_id: {"ok": True}})
                    if cross:
                        await _until(partial(_stamped, db, item_id), reporter, 0.005)
                    else:
                        await orch.wait(job_id, timeout=WAIT)
                    timed = await orch.list_items(job_id, bench_app.TIMED_STEP)
                    output = timed.items[0].output or {}
                    latencies.append(int(output["started_ns"]) - submitted)
                    reporter.tick()

            await _ticking(reporter, body)
    return {"latency_ms": percentiles_ms(latencies), "samples": len(latencies)}


async def snapshots(db: Database, sizes: list[int], seconds: float) -> dict[str, Any]:
    """W4: ``Orchestrator.snapshot`` latency and rate for jobs of each size."""
    figures: dict[str, Any] = {}
    done = [0]
    reporter = ProgressReporter(lambda: done[0])
    async with orchestrator(db, run_workers=False) as orch:
        for size in sizes:
            created = time.perf_counter()
            rows = [{"key": f"i{i}"} for i in range(size)]
            job_id = (await orch.create_job(bench_app.NOOP, rows)).id
            create_s = time.perf_counter() - created
            for _ in range(5):  # warm caches and connections
                await orch.snapshot(job_id)
            samples: list[int] = []
            started = time.perf_counter()
            while time.perf_counter() - started < seconds or len(samples) < 20:
                before = time.perf_counter_ns()
                await orch.snapshot(job_id)
                samples.append(time.perf_counter_ns() - before)
                done[0] += 1
                reporter.tick()
            elapsed = time.perf_counter() - started
            figures[str(size)] = {
                "latency_ms": percentiles_ms(samples),
                "per_s": len(samples) / elapsed,
                "create_job_s": create_s,
            }
    return {"sizes": figures, "peak_rss_mb": peak_rss_mb()}


async def io_bound(db: Database, items: int) -> dict[str, Any]:
    """W5: ``items`` items whose handler awaits 50 ms, 50 at a time."""
    reporter = ProgressReporter(lambda: bench_app.calls[0])
    async with orchestrator(db, concurrency=bench_app.IO_CONCURRENCY) as orch:
        reporter.restart()
        started = time.perf_counter()

        async def body() -> JobStatus:
            rows = [{"key": f"i{i}"} for i in range(items)]
            job_id = (await orch.create_job(bench_app.IO_BOUND, rows)).id
            return (await orch.wait(job_id, timeout=WAIT)).job.status

        status = await _ticking(reporter, body)
        elapsed = time.perf_counter() - started
    ideal = items * bench_app.IO_WAIT / bench_app.IO_CONCURRENCY
    return {
        "elapsed_s": elapsed,
        "ideal_s": ideal,
        "overhead": elapsed / ideal - 1,
        "job": status,
        "incomplete": int(status is not JobStatus.COMPLETED),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["W1", "W2", "W3", "W4", "W5"])
    parser.add_argument("--backend", choices=["memory", "sqlite", "postgres"], required=True)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: in-process)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--cross", action="store_true", help="W3: act from another process")
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    db = Database.fresh(args.backend, args.postgres_url)
    runs: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "W1": lambda: flow(db, args.jobs, args.items, args.workers),
        "W2": lambda: flow(db, args.jobs, args.items, args.workers),
        "W3": lambda: human(db, args.samples, args.cross),
        "W4": lambda: snapshots(db, [int(s) for s in args.sizes.split(",")], args.seconds),
        "W5": lambda: io_bound(db, args.items),
    }
    try:
        figures = anyio.run(runs[args.workload])
    finally:
        db.remove()
    emit("result", **json.loads(json.dumps(figures, default=str)))


if __name__ == "__main__":
    main()
