"""The host app the crash tests' worker processes run, writing an outside ledger.

Design decision: the oracle must not be stepflow's own tables, so every handler call
appends one line to a plain file opened with ``O_APPEND`` (named by the environment
variable ``STEPFLOW_CRASH_LEDGER``): ``idempotency-key attempt pid step``. One small
``write`` to an ``O_APPEND`` file is atomic between processes and outlives a
``kill -9`` of the writer (it sits in the page cache), so the file says exactly which
calls ran, in which process, in which order.
"""

from __future__ import annotations

import os
from typing import Any

from stepflow import App, Handlers, Pipeline

__all__ = ["LEDGER_ENV", "SOAK_STEPS", "WRITER_STEPS", "app", "record"]

#: The environment variable naming the ledger file of this process's handlers.
LEDGER_ENV = "STEPFLOW_CRASH_LEDGER"
SOAK_STEPS = [f"s{n}" for n in range(1, 7)]
WRITER_STEPS = ["fetch", "review", "ship"]
#: Every rescued attempt runs again at once, however often its worker was killed.
_RETRY = {"max_attempts": 1000, "initial_delay": 0}

_ledger_fd: list[int] = []  #: opened on the first call, kept for the process's life


def _append(line: str) -> None:
    if not _ledger_fd:
        path = os.environ[LEDGER_ENV]
        _ledger_fd.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_ledger_fd[0], line.encode())


async def record(ctx: Any) -> dict[str, Any]:
    """Write this call to the ledger, then succeed."""
    _append(f"{ctx.idempotency_key} {ctx.attempt} {os.getpid()} {ctx.step.key}\n")
    return {"step": ctx.step.key}


handlers = Handlers()
handlers.add("record", record)
soak = Pipeline.load(
    {
        "name": "soak",
        "steps": [{"key": key, "handler": "record", "retry": _RETRY} for key in SOAK_STEPS],
    }
)
writers = Pipeline.load(
    {
        "name": "writers",
        "steps": [
            {"key": "fetch", "handler": "record", "retry": _RETRY},
            {"key": "review", "handler": "record", "retry": _RETRY, "advance": "manual"},
            {"key": "ship", "handler": "record", "retry": _RETRY},
        ],
    }
)
app = App(pipelines=[soak, writers], handlers=handlers)
