"""The demo on a SQLite file survives kill -9 and Ctrl-C: a second run resumes its job."""

from __future__ import annotations

import functools
import io
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from stepflow_registration import run_demo

pytestmark = pytest.mark.slow

RESTAURANTS = 4
#: Bounds the wait for a child process to reach a state; generous for a busy machine.
DEADLINE = 60.0
#: How soon the second run takes back the work the killed one held (the demo's default is 5).
LEASE = 2.0
DEMO_ARGS = f"restaurants={RESTAURANTS}, latency=0, time_scale=0.01, lease_seconds={LEASE}"
CHILD = (
    "import io, anyio, functools\n"
    "from rich.console import Console\n"
    "from stepflow_registration import run_demo\n"
    "anyio.run(functools.partial(run_demo, database_url={db!r}, " + DEMO_ARGS + ","
    " console=Console(file=io.StringIO())))\n"
)


def _query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows of ``sql``, or none while the demo has not created its tables yet."""
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def _job_under_way(db: Path) -> str | None:
    """The demo job's id once it is in progress and account setup has begun, else None."""
    rows = _query(
        db,
        "SELECT j.id FROM stepflow_jobs j WHERE j.status = 'in_progress' AND EXISTS ("
        " SELECT 1 FROM stepflow_events e WHERE e.job_id = j.id AND e.type = 'substep.status')",
    )
    return str(rows[0][0]) if rows else None


def _wait_until_under_way(db: Path, proc: subprocess.Popen[bytes]) -> str:
    """Look at the database until the job is under way; fail if the demo ends first."""
    deadline = time.monotonic() + DEADLINE
    while (job_id := _job_under_way(db)) is None:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the demo ended before it got going ({proc.returncode}): {err!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"the demo's job was not under way within {DEADLINE} s")
        time.sleep(0.05)  # the pace of looking at another process's database
    return job_id


def _cli(db: Path) -> list[str]:
    demo = ["demo", "--database-url", str(db), "--restaurants", str(RESTAURANTS)]
    return [sys.executable, "-c", "from stepflow.cli import main; main()", *demo]


def _start(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_demo_resumes_after_kill_9(tmp_path: Path) -> None:
    """A demo killed with SIGKILL mid-run is resumed by the next run: same job, no duplicates."""
    db = tmp_path / "demo.db"
    proc = _start([sys.executable, "-c", CHILD.format(db=str(db))])
    try:
        job_id = _wait_until_under_way(db, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    (status,) = _query(db, "SELECT status FROM stepflow_jobs WHERE id = ?", job_id)[0]
    assert status == "in_progress"  # killed mid-run, not after it finished

    again = functools.partial(
        run_demo,
        database_url=str(db),
        restaurants=RESTAURANTS,
        latency=0,
        time_scale=0.01,
        lease_seconds=LEASE,
        console=Console(file=io.StringIO()),
    )
    summary = anyio.run(again)
    assert summary.resumed and summary.job_id == job_id
    assert summary.completed + summary.failed == RESTAURANTS
    assert _query(db, "SELECT id FROM stepflow_jobs") == [(job_id,)]
    keys = _query(db, "SELECT key, count(*) FROM stepflow_items GROUP BY key")
    assert sorted(keys) == [(f"r{n:03d}", 1) for n in range(1, RESTAURANTS + 1)]


def test_cli_demo_exits_130_on_ctrl_c_and_the_next_run_finishes(tmp_path: Path) -> None:
    """SIGINT stops `stepflow demo` with exit code 130; run again, it resumes and exits 0."""
    db = tmp_path / "demo.db"
    first = _start(_cli(db))
    try:
        job_id = _wait_until_under_way(db, first)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err.decode()
    assert b"interrupted" in out

    second = subprocess.run(_cli(db), capture_output=True, timeout=DEADLINE * 3, check=False)
    assert second.returncode == 0, second.stderr.decode()
    assert b"resuming job" in second.stdout
    assert _query(db, "SELECT id FROM stepflow_jobs") == [(job_id,)]
    keys = _query(db, "SELECT key, count(*) FROM stepflow_items GROUP BY key")
    assert sorted(keys) == [(f"r{n:03d}", 1) for n in range(1, RESTAURANTS + 1)]
