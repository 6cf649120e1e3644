"""Four processes write to one SQLite database at once: no lock error reaches a caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .crash_app import LEDGER_ENV, WRITER_STEPS
from .harness import DEADLINE, ROOT, Database, audit, env_int, printed
from .writer import ITEMS

pytestmark = pytest.mark.slow

#: How long the writers write (STEPFLOW_CRASH_WRITER_SECONDS shortens or lengthens it).
SECONDS = env_int("STEPFLOW_CRASH_WRITER_SECONDS", 60)
PROCESSES = 4


def test_four_sqlite_writer_processes_see_no_lock_errors_and_lose_nothing(
    tmp_path: Path,
) -> None:
    """4 processes create, act and work on one SQLite file: no error reaches a call; all is kept."""
    database = Database(str(tmp_path / "shared.db"))
    ledger = tmp_path / "ledger.txt"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, LEDGER_ENV: str(ledger)}
    reports = [tmp_path / f"writer-{n}.json" for n in range(PROCESSES)]
    logs = [(tmp_path / f"writer-{n}.log").open("wb") for n in range(PROCESSES)]
    processes: list[subprocess.Popen[bytes]] = []
    with printed("sqlite writers") as figures:
        try:
            for report, log in zip(reports, logs, strict=True):
                argv = [sys.executable, "-m", "tests.crash.writer", database.url, str(SECONDS)]
                processes.append(
                    subprocess.Popen(
                        [*argv, str(report)], cwd=tmp_path, env=env, stdout=log, stderr=log
                    )
                )
            codes = [p.wait(timeout=SECONDS + DEADLINE * 3) for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
            for log in logs:
                log.close()
        outputs = [(tmp_path / f"writer-{n}.log").read_text(errors="replace") for n in range(4)]
        results = [json.loads(r.read_text()) for r in reports if r.exists()]
        errors = [error for result in results for error in result["errors"]]
        created = {job for result in results for job in result["created"]}
        check = audit(database, ledger)
        figures.update(
            jobs=len(created),
            calls=sum(r["calls"] for r in results),
            errors=len(errors),
            retried_inside=sum(o.count("storage write failed") for o in outputs),
            audit=check.summary(),
        )
    assert codes == [0] * PROCESSES, [o[-2000:] for o in outputs]
    assert errors == []
    assert len(results) == PROCESSES
    in_tables = {job for (job,) in database.rows("SELECT id FROM stepflow_jobs")}
    assert in_tables == created and len(created) >= PROCESSES
    assert check.item_steps == len(created) * ITEMS * len(WRITER_STEPS)
    assert check.runs == check.item_steps  # every handler call ran once: none lost, none twice
    assert check.faults() == {}, check.summary()
    assert not [o for o in outputs if "Traceback" in o]
