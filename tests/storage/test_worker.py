"""`stepflow worker`: a separate process runs a host's app against the shared database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from stepflow import ItemStatus, JobStatus, Orchestrator
from stepflow.storage.sql import SQLStorage

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = textwrap.dedent(
    '''
    """A host app for the worker tests: two steps, a ledger, and a gate file."""
    import os, time
    from pathlib import Path
    from stepflow import App, Handlers, Pipeline

    HERE = Path(__file__).parent
    handlers = Handlers()

    def record(ctx):
        with open(HERE / "ledger.txt", "a") as ledger:
            ledger.write(f"{ctx.idempotency_key} {os.getpid()}\\n")
        return {"step": ctx.step.key}

    def gated(ctx):
        if ctx.data.get("gated"):
            (HERE / "started").touch()
            while not (HERE / "open").exists():  # a slow handler, released by the test
                time.sleep(0.01)
        return record(ctx)

    handlers.add("gated", gated)
    handlers.add("record", record)
    pipeline = Pipeline.load({"name": "ledger", "steps": [
        {"key": "first", "handler": "gated"}, {"key": "second", "handler": "record"}]})
    app = App(pipelines=[pipeline], handlers=handlers)
    '''
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "ledger_app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def worker(app_dir: Path) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(app_dir)}
    command = [
        sys.executable,
        "-c",
        "from stepflow.cli import main; main()",
        "worker",
        "--database-url",
        str(app_dir / "shared.db"),
        "--app",
        "ledger_app:app",
        "--grace",
        "20",
    ]
    process = subprocess.Popen(
        command, cwd=app_dir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()  # reap it and close its pipe


async def client(app_dir: Path) -> Orchestrator:
    """An orchestrator that only acts and reads (the worker process runs the work)."""
    sys.path.insert(0, str(app_dir))
    try:
        import ledger_app  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(app_dir))
    storage = SQLStorage(str(app_dir / "shared.db"))
    return ledger_app.app.orchestrator(storage, run_workers=False)  # type: ignore[no-any-return]


async def test_a_worker_process_runs_jobs_created_elsewhere(
    app_dir: Path, worker: subprocess.Popen[str]
) -> None:
    """Jobs created by one process are run once per item and step by a worker process."""
    async with await client(app_dir) as orch:
        job = await orch.create_job("ledger", [{"key": f"k{n}"} for n in range(5)])
        snap = await orch.wait(job.id, timeout=60)
    assert snap.job.status is JobStatus.COMPLETED
    lines = (app_dir / "ledger.txt").read_text().splitlines()
    keys = [line.split()[0] for line in lines]
    assert len(keys) == 10 and len(set(keys)) == 10
    assert {line.split()[1] for line in lines} == {str(worker.pid)}


async def test_sigterm_lets_running_work_finish_then_exits(
    app_dir: Path, worker: subprocess.Popen[str]
) -> None:
    """On SIGTERM the worker claims nothing new, finishes what runs, and exits 0."""
    async with await client(app_dir) as orch:
        job = await orch.create_job("ledger", [{"key": "slow", "data": {"gated": True}}])
        with anyio.fail_after(60):
            while not (app_dir / "started").exists():  # noqa: ASYNC110 - another process
                await anyio.sleep(0.01)
        worker.send_signal(signal.SIGTERM)
        (app_dir / "open").touch()
        output, _ = worker.communicate(timeout=60)
        page = await orch.list_items(job.id, "first")
        later = await orch.list_items(job.id, "second")
    assert worker.returncode == 0, output
    assert "SIGTERM: draining" in output and "drained" in output
    assert page.items[0].status is ItemStatus.PASSED
    assert later.items[0].status is ItemStatus.AVAILABLE  # not claimed after SIGTERM
