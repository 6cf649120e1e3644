"""Worker processes, the ledger and the database, seen from outside stepflow.

Design decision: the tests judge stepflow by two independent records — the handlers'
append-only ledger (what ran, where) and stepflow's own tables read with plain SQL
(what was committed) — and never by asking stepflow itself. Every child process is
owned by a :class:`Workers` context, which kills whatever is still alive on the way
out, so a failing test leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import anyio
import pytest

from stepflow.storage.sql import SQLStorage

from .crash_app import LEDGER_ENV, app

__all__ = [
    "DEADLINE",
    "ROOT",
    "Audit",
    "Database",
    "LedgerEntry",
    "Workers",
    "audit",
    "create_jobs",
    "env_int",
    "ledger_reached",
    "ledger_size",
    "printed",
    "read_ledger",
    "wait_until",
]

#: The repository root: on the children's import path, so ``tests.crash`` imports there.
ROOT = Path(__file__).resolve().parents[2]
#: Bounds every wait on another process; generous, for a busy two-core machine.
DEADLINE = 120.0
#: The pace of looking at another process's files and tables.
POLL = 0.05
TERMINAL = ("completed", "failed", "cancelled")
#: The line a worker prints once its engine runs (not the same words in a traceback).
READY = re.compile(rb"^worker \S+ running on ", re.MULTILINE)


def env_int(name: str, default: int) -> int:
    """An integer from the environment variable ``name``, else ``default``."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@dataclass(frozen=True)
class Database:
    """A shared database as a worker's ``--database-url`` and ``--schema`` name it."""

    url: str
    schema: str | None = None

    @property
    def is_sqlite(self) -> bool:
        return not self.url.startswith("postgresql")

    def storage(self) -> SQLStorage:
        return SQLStorage(self.url, schema=self.schema)

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of a plain SQL query (``?`` placeholders) on stepflow's tables."""
        if self.is_sqlite:
            with closing(sqlite3.connect(self.url, timeout=30)) as conn:
                return conn.execute(sql, params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def unfinished_jobs(self) -> int:
        marks = ", ".join("?" for _ in TERMINAL)
        sql = f"SELECT count(*) FROM stepflow_jobs WHERE status NOT IN ({marks})"
        return int(self.rows(sql, *TERMINAL)[0][0])


@dataclass(frozen=True)
class LedgerEntry:
    """One handler call: its idempotency key, attempt, process and step."""

    key: str
    attempt: int
    pid: int
    step: str


def read_ledger(path: Path) -> list[LedgerEntry]:
    """Every complete line of the ledger, in the order the calls wrote them."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        key, attempt, pid, step = line.split()
        entries.append(LedgerEntry(key, int(attempt), int(pid), step))
    return entries


def ledger_size(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def ledger_reached(path: Path, size: int) -> Callable[[], bool]:
    """A condition: the ledger at ``path`` holds at least ``size`` calls."""
    return lambda: ledger_size(path) >= size


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Workers:
    """Starts ``stepflow worker`` processes on ``database``; kills them all on close."""

    database: Database
    ledger: Path
    logs: Path
    lease_seconds: float = 30.0
    concurrency: int = 64
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)  #: pids ended by SIGKILL
    _files: list[IO[bytes]] = field(default_factory=list)

    def command(self) -> list[str]:
        argv = [sys.executable, "-c", "from stepflow.cli import main; main()", "worker"]
        argv += ["--database-url", self.database.url, "--app", "tests.crash.crash_app:app"]
        argv += ["--lease-seconds", f"{self.lease_seconds:g}", "--grace", "10"]
        argv += ["--concurrency", str(self.concurrency)]
        if self.database.schema:
            argv += ["--schema", self.database.schema]
        return argv

    def start(self) -> subprocess.Popen[bytes]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, LEDGER_ENV: str(self.ledger)}
        log = (self.logs / f"worker-{len(self.started)}.log").open("wb")
        self._files.append(log)
        process = subprocess.Popen(
            self.command(), cwd=self.logs, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append(process)
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> Path:
        return self.logs / f"worker-{self.started.index(process)}.log"

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL, and reap it."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=DEADLINE)
        self.killed.add(process.pid)

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM (drain, hand back, exit); its exit code."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=DEADLINE)

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.started if p.poll() is None]

    def check_alive(self, processes: Iterable[subprocess.Popen[bytes]]) -> None:
        """Fail the test, with its log, if one of ``processes`` has ended."""
        for process in processes:
            if process.poll() is not None:
                pytest.fail(
                    f"worker {process.pid} ended with {process.returncode}:\n"
                    + _tail(self.log_of(process))
                )

    def ready(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether ``process`` has started its engine (it says so on its output)."""
        return READY.search(self.log_of(process).read_bytes()) is not None

    def errors_logged(self) -> list[str]:
        """Tracebacks in any worker's output (a crash of stepflow inside a worker)."""
        found = []
        for process in self.started:
            text = self.log_of(process).read_text(errors="replace")
            if "Traceback" in text:
                found.append(f"worker {process.pid}:\n{text[-3000:]}")
        return found

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for process in self.alive():
                process.kill()
            for process in self.started:
                process.wait(timeout=DEADLINE)
        finally:
            for log in self._files:
                log.close()


def wait_until(
    condition: Callable[[], bool],
    what: str,
    workers: Workers | None = None,
    watch: Sequence[subprocess.Popen[bytes]] = (),
    deadline: float = DEADLINE,
    poll: float = POLL,
) -> None:
    """Look until ``condition()`` holds; fail if a watched worker ends or time runs out."""
    end = time.monotonic() + deadline
    while not condition():
        if workers is not None:
            workers.check_alive(watch)
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline:g} s: {what}")
        time.sleep(poll)


def create_jobs(database: Database, pipeline: str, jobs: int, items: int = 1) -> list[str]:
    """Create ``jobs`` jobs of ``items`` items each (no workers in this process)."""

    async def main() -> list[str]:
        ids: list[str] = []
        limiter = anyio.CapacityLimiter(8)
        async with app.orchestrator(database.storage(), run_workers=False) as orch:

            async def one(n: int) -> None:
                async with limiter:
                    made = [{"key": f"j{n}-i{i}"} for i in range(items)]
                    ids.append((await orch.create_job(pipeline, made)).id)

            async with anyio.create_task_group() as tg:
                for n in range(jobs):
                    tg.start_soon(one, n)
        return ids

    return anyio.run(main)


@dataclass
class Audit:
    """What the ledger and the tables say about a run; every count but ``runs`` and
    ``reruns_after_crash`` must be 0 for a correct run."""

    item_steps: int = 0  #: item-steps the tables hold
    runs: int = 0  #: ledger lines
    lost: int = 0  #: item-steps the ledger never saw run
    unexpected: int = 0  #: ledger keys the tables do not know
    duplicated: int = 0  #: extra runs not explained by a killed worker
    reruns_after_crash: int = 0  #: extra runs whose earlier run died with its worker
    out_of_order: int = 0  #: runs of one item-step whose attempts do not increase
    last_run_not_committed: int = 0  #: the last run's attempt is not the stored attempt
    completions_not_one: int = 0  #: item-steps without exactly one ``processed`` event
    jobs_not_completed: int = 0
    by_pid: Counter[int] = field(default_factory=Counter)

    def faults(self) -> dict[str, int]:
        names = ["lost", "unexpected", "duplicated", "out_of_order", "last_run_not_committed"]
        names += ["completions_not_one", "jobs_not_completed"]
        return {name: getattr(self, name) for name in names if getattr(self, name)}

    def summary(self) -> str:
        return (
            f"item-steps={self.item_steps} runs={self.runs} lost={self.lost} "
            f"duplicated={self.duplicated} re-run-after-crash={self.reruns_after_crash} "
            f"completions-not-one={self.completions_not_one} "
            f"jobs-not-completed={self.jobs_not_completed} workers={len(self.by_pid)}"
        )


def _data(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def audit(database: Database, ledger: Path, killed: Collection[int] = ()) -> Audit:
    """Check the ledger against the tables: each item-step ran, and committed once."""
    report = Audit()
    visits = {
        f"{job}:{item}:{step}": int(attempts)
        for job, item, step, attempts in database.rows(
            "SELECT job_id, item_id, step, attempts FROM stepflow_visits"
        )
    }
    report.item_steps = len(visits)
    completions: Counter[str] = Counter()
    for job, item, step, data in database.rows(
        "SELECT job_id, item_id, step, data FROM stepflow_events WHERE type = 'item.status'"
    ):
        if _data(data).get("to") == "processed":
            completions[f"{job}:{item}:{step}"] += 1
    report.completions_not_one = sum(1 for key in visits if completions[key] != 1)
    statuses = database.rows("SELECT status FROM stepflow_jobs")
    report.jobs_not_completed = sum(1 for (status,) in statuses if status != "completed")

    runs: defaultdict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in read_ledger(ledger):
        runs[entry.key].append(entry)
        report.by_pid[entry.pid] += 1
    report.runs = sum(report.by_pid.values())
    report.lost = sum(1 for key in visits if key not in runs)
    report.unexpected = sum(1 for key in runs if key not in visits)
    for key, calls in runs.items():
        for earlier in calls[:-1]:
            if earlier.pid in killed:
                report.reruns_after_crash += 1
            else:
                report.duplicated += 1
        attempts = [call.attempt for call in calls]
        if attempts != sorted(set(attempts)):
            report.out_of_order += 1
        if key in visits and calls[-1].attempt != visits[key]:
            report.last_run_not_committed += 1
    return report


@contextmanager
def printed(label: str) -> Iterator[dict[str, object]]:
    """Collect figures during a test and print them on one line at the end."""
    figures: dict[str, object] = {}
    started = time.monotonic()
    try:
        yield figures
    finally:
        figures["seconds"] = round(time.monotonic() - started, 1)
        print(f"\n[{label}] " + " ".join(f"{k}={v}" for k, v in figures.items()))
