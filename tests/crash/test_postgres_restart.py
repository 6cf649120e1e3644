"""PostgreSQL restarts under running workers: they reconnect and finish, losing nothing.

Design decision: the restart is the real one an operator does (``pg_ctlcluster ...
restart``, which drops every connection), so it runs only where that is possible —
as root beside a local cluster — and skips with the reason elsewhere. Whatever
happens, the test waits for PostgreSQL to accept connections again before it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ..backends import postgres_schema
from .crash_app import SOAK_STEPS
from .harness import (
    Database,
    Workers,
    audit,
    create_jobs,
    ledger_reached,
    ledger_size,
    printed,
    wait_until,
)

pytestmark = pytest.mark.slow

JOBS = 1000
WORKERS = 2
CLUSTER_ETC = Path("/etc/postgresql")


def _cluster_version(url: str) -> str:
    """The local cluster's version, or skip the test saying why it cannot restart it."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        pytest.skip("pg_ctlcluster/pg_isready not found: cannot restart PostgreSQL here")
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root (CI runs as root)")
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"the test PostgreSQL {url} is not the local cluster")
    versions = sorted(p.name for p in CLUSTER_ETC.iterdir()) if CLUSTER_ETC.is_dir() else []
    if not versions:
        pytest.skip(f"no cluster under {CLUSTER_ETC}")
    return versions[-1]


def _ready(url: str) -> bool:
    parts = urlsplit(url)
    argv = ["pg_isready", "-q", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    return subprocess.run(argv, check=False, timeout=30).returncode == 0


def _wait_ready(url: str, version: str, deadline: float = 120.0) -> None:
    """Wait until PostgreSQL accepts connections; start the cluster if it stays down."""
    end = time.monotonic() + deadline
    started = False
    while not _ready(url):
        if not started and time.monotonic() > end - deadline / 2:
            _pg_ctlcluster(version, "start", check=False)
            started = True
        if time.monotonic() > end:
            pytest.fail(f"PostgreSQL was not accepting connections within {deadline:g} s")
        time.sleep(0.2)  # the pace of asking pg_isready


def _pg_ctlcluster(version: str, action: str, check: bool = True) -> None:
    argv = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    subprocess.run(argv, check=check, timeout=120, capture_output=True)


@pytest.fixture
def restartable(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Database, str]]:
    """A PostgreSQL schema of its own on a cluster this test may restart."""
    version = _cluster_version(postgres_url)
    try:
        with postgres_schema(postgres_url) as schema:
            yield Database(postgres_url, schema), version
            _wait_ready(postgres_url, version)  # before the schema is dropped
    finally:
        _wait_ready(postgres_url, version)


def test_workers_survive_a_postgres_restart_and_lose_nothing(
    restartable: tuple[Database, str], tmp_path: Path
) -> None:
    """Workers ride out a PostgreSQL restart mid-batch: all jobs finish, each step commits once."""
    database, version = restartable
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        printed("postgres restart") as figures,
        Workers(database, tmp_path / "ledger.txt", logs) as workers,
    ):
        create_jobs(database, "soak", JOBS)
        total = JOBS * len(SOAK_STEPS)
        running = [workers.start() for _ in range(WORKERS)]
        wait_until(ledger_reached(workers.ledger, total // 10), "a tenth done", workers, running)
        figures["calls_before_restart"] = ledger_size(workers.ledger)
        unfinished_at_restart = database.unfinished_jobs()
        began = time.monotonic()
        try:
            _pg_ctlcluster(version, "restart")
        finally:
            _wait_ready(database.url, version)
        figures["restart_s"] = round(time.monotonic() - began, 1)
        figures["calls_after_restart"] = at_restart = ledger_size(workers.ledger)
        wait_until(lambda: database.unfinished_jobs() == 0, "every job final", workers, running)
        codes = [workers.stop(process) for process in running]
        report = audit(database, workers.ledger)
        figures["audit"] = report.summary()
        retried = sum(
            workers.log_of(p).read_text(errors="replace").count("storage write failed")
            for p in running
        )
        figures["writes_retried"] = retried
    # The restart came mid-batch and cut writes off (the figure after it may already be
    # the total: the downtime is short and the workers catch up while it is checked).
    assert unfinished_at_restart and retried > 0
    assert at_restart <= total
    assert codes == [0] * WORKERS
    assert report.item_steps == total
    assert report.runs == total  # leases outlast the restart: nothing needed to run again
    assert report.faults() == {}, report.summary()
