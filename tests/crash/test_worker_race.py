"""Worker processes racing for one database: every item-step runs exactly once, work spreads."""

from __future__ import annotations

import time
from functools import partial

import pytest

from .crash_app import SOAK_STEPS
from .harness import Database, Workers, audit, create_jobs, env_int, printed, wait_until

pytestmark = pytest.mark.slow

#: Jobs of 1 item x 6 steps (STEPFLOW_CRASH_JOBS scales it down or up).
JOBS = env_int("STEPFLOW_CRASH_JOBS", 1000)
#: Handlers per worker: fewer than the items at a step, so no one worker can hold them all.
CONCURRENCY = 16
#: Bounds the drain: generous, the SQL path's speed is not what this test judges.
DRAIN_DEADLINE = 900.0


def test_racing_workers_run_every_item_step_exactly_once(
    database: Database, workers: Workers
) -> None:
    """4 PostgreSQL or 2 SQLite workers drain the jobs: each item-step runs once; all do some."""
    count = 2 if database.is_sqlite else 4
    workers.concurrency = CONCURRENCY
    label = f"worker race {'sqlite' if database.is_sqlite else 'postgres'} x{count}"
    with printed(label) as figures:
        racing = [workers.start() for _ in range(count)]
        for process in racing:  # all are claiming before the first job exists
            wait_until(partial(workers.ready, process), "worker up", workers, racing)
        began = time.monotonic()
        create_jobs(database, "soak", JOBS)
        figures["created"] = JOBS
        figures["create_s"] = round(time.monotonic() - began, 1)
        began = time.monotonic()
        wait_until(
            lambda: database.unfinished_jobs() == 0,
            "every job final",
            workers,
            racing,
            deadline=DRAIN_DEADLINE,
        )
        drained = time.monotonic() - began
        figures["drain_s"] = round(drained, 1)
        figures["item_steps_per_s"] = round(JOBS * len(SOAK_STEPS) / drained)
        codes = [workers.stop(process) for process in racing]
        report = audit(database, workers.ledger)
        figures["audit"] = report.summary()
        figures["runs_by_worker"] = sorted(report.by_pid.values())
    assert codes == [0] * count
    assert report.item_steps == JOBS * len(SOAK_STEPS)
    assert report.runs == report.item_steps  # no crash here, so not one run more
    assert report.faults() == {}, report.summary()
    assert set(report.by_pid) == {p.pid for p in racing}  # every worker did some of it
    assert not workers.errors_logged()
