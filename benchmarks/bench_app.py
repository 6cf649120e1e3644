"""The pipelines and handlers every stepflow workload runs, as one importable App.

Design decision: the in-process runs and the ``stepflow worker --app bench_app:app``
processes build their orchestrators from this one module, so a figure never differs
between the two because the definitions did. Handlers do no work of their own (the
benchmark measures the library, not the handler); the ones that matter to a workload
record a timestamp or count calls.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel

from _protocol import monotonic_ns
from stepflow import App, Handlers, Pipeline

__all__ = [
    "HUMAN",
    "IO_BOUND",
    "NOOP",
    "STEPS",
    "app",
    "calls",
    "human_pipeline",
    "io_pipeline",
    "noop_pipeline",
]

STEPS = 6
NOOP = "noop6"
HUMAN = "human6"
IO_BOUND = "io50"
IO_WAIT = 0.05
IO_CONCURRENCY = 50
HUMAN_STEP = "s2"  # step 3: a person submits an approval
TIMED_STEP = "s3"  # step 4: its handler records when it started

calls = [0]  #: handler calls finished in this process (the in-process progress count)


class Approval(BaseModel):
    """The payload a person submits at the human step."""

    ok: bool = True


def noop_pipeline(concurrency: int = 64) -> Pipeline:
    """Six automatic steps whose handler does nothing."""
    steps = [{"key": f"s{n}", "handler": "noop", "concurrency": concurrency} for n in range(STEPS)]
    return Pipeline.load({"name": NOOP, "steps": steps})


def human_pipeline() -> Pipeline:
    """Six steps; step 3 waits for a person's approval, step 4 records its start time."""
    steps: list[dict[str, Any]] = []
    for n in range(STEPS):
        key = f"s{n}"
        if key == HUMAN_STEP:
            steps.append({"key": key, "type": "action_required", "action": "approve"})
        else:
            handler = "stamp" if key == TIMED_STEP else "noop"
            steps.append({"key": key, "handler": handler, "concurrency": 64})
    return Pipeline.load({"name": HUMAN, "steps": steps})


def io_pipeline() -> Pipeline:
    """One step whose handler awaits 50 ms, 50 items at a time."""
    step = {"key": "wait", "handler": "io_wait", "concurrency": IO_CONCURRENCY}
    return Pipeline.load({"name": IO_BOUND, "steps": [step]})


async def noop(ctx: Any) -> None:
    calls[0] += 1


async def stamp(ctx: Any) -> dict[str, int]:
    started = monotonic_ns()
    calls[0] += 1
    return {"started_ns": started}


async def io_wait(ctx: Any) -> None:
    await anyio.sleep(IO_WAIT)
    calls[0] += 1


def handlers() -> Handlers:
    bound = Handlers()
    bound.add("noop", noop)
    bound.add("stamp", stamp)
    bound.add("io_wait", io_wait)
    bound.action("approve", Approval)
    return bound


def app() -> App:
    """The App a ``stepflow worker --app bench_app:app`` process runs."""
    return App(
        pipelines=[noop_pipeline(), human_pipeline(), io_pipeline()],
        handlers=handlers(),
    )
