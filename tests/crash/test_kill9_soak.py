"""kill -9 soak: workers killed at random moments lose nothing and finish nothing twice."""

from __future__ import annotations

import random

import pytest

from .crash_app import SOAK_STEPS
from .harness import (
    Database,
    Workers,
    audit,
    create_jobs,
    env_int,
    ledger_reached,
    ledger_size,
    printed,
    wait_until,
)

pytestmark = pytest.mark.slow

#: SIGKILLs per backend (STEPFLOW_CRASH_KILLS raises it for a longer soak).
KILLS = env_int("STEPFLOW_CRASH_KILLS", 50)
#: Each worker lives until the ledger grew by 1..MAX_GROWTH calls, then is killed.
MAX_GROWTH = 40
#: Handlers a worker runs at once: few, so a kill lands anywhere in a claim-run-commit cycle.
CONCURRENCY = 8
#: Enough work that the kills end before the jobs do, with room for a fast worker to run
#: well past its target before its kill lands (the ledger is polled every 5 ms).
JOBS = max(600, KILLS * 12)
SEED = env_int("STEPFLOW_CRASH_SEED", 20261204)
#: The CLI's shortest lease: a killed worker's claims come back a second later.
LEASE = 1.0


def test_kill_9_at_random_points_loses_nothing_and_commits_each_step_once(
    database: Database, workers: Workers
) -> None:
    """After SIGKILLs every job completes; each item-step commits once; re-runs only after kills."""
    rng = random.Random(SEED)
    workers.lease_seconds = LEASE
    workers.concurrency = CONCURRENCY
    with printed(f"kill-9 soak {'sqlite' if database.is_sqlite else 'postgres'}") as figures:
        create_jobs(database, "soak", JOBS)
        expected = JOBS * len(SOAK_STEPS)
        for _ in range(KILLS):
            assert database.unfinished_jobs(), "the jobs ran out before the kills: raise JOBS"
            target = ledger_size(workers.ledger) + rng.randint(1, MAX_GROWTH)
            process = workers.start()
            wait_until(
                ledger_reached(workers.ledger, target),
                f"the ledger reached {target} calls",
                workers,
                [process],
                poll=0.005,
            )
            workers.kill(process)
        survivor = workers.start()
        wait_until(lambda: database.unfinished_jobs() == 0, "every job final", workers, [survivor])
        assert workers.stop(survivor) == 0
        report = audit(database, workers.ledger, workers.killed)
        figures.update(kills=len(workers.killed), jobs=JOBS, audit=report.summary())
    assert len(workers.killed) == KILLS
    assert len({p.pid for p in workers.started}) == len(workers.started)  # no pid reused
    assert report.item_steps == expected
    assert report.faults() == {}, report.summary()
    assert not workers.errors_logged()
