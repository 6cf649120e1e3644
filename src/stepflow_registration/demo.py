"""The registration demo: the real pipeline over fake restaurants, with a live view.

Design decision: the demo is assembled only from public parts — the shipped pipeline
scaled by :func:`~.pipeline.load_pipeline` (so the 60 s account rate limit shrinks with
every other duration, by configuration), :func:`~.handlers.bind` over
:class:`~.fakes.FakeServices`, a :class:`~.autopilot.SimulatedOperator` for the person
steps, and a view fed by snapshots and events. It uses a fixed idempotency key, so
pointed at a durable storage that already holds its job it resumes that job instead of
starting another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from stepflow import Event, JobStatus, Orchestrator, Snapshot
from stepflow.ports import Storage

from ._view import ProgressView
from .autopilot import Decisions, SimulatedDecisions, SimulatedOperator, all_items
from .fakes import FailureRates, FakeServices, fake_restaurants
from .handlers import bind
from .pipeline import load_pipeline
from .prompting import PromptDecisions

__all__ = ["DEMO_IDEMPOTENCY_KEY", "DemoSummary", "run_demo"]

DEMO_IDEMPOTENCY_KEY = "stepflow-registration-demo"
_FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did; ``step_seconds`` is each step's span from first to last event."""

    job_id: str
    status: str
    resumed: bool
    restaurants: int
    completed: int
    failed: int
    retried: int
    injected: dict[str, int]
    step_seconds: dict[str, float]
    elapsed: float
    operator_actions: int = 0
    step_counts: dict[str, dict[str, int]] = field(default_factory=dict)


async def run_demo(
    *,
    storage: Storage | None = None,
    restaurants: int = 20,
    seed: int = 1,
    failure_rate: float = 0.06,
    latency: float = 0.03,
    time_scale: float = 0.005,
    interactive: bool = False,
    console: Console | None = None,
    database_url: str | None = None,
    lease_seconds: float = 5.0,
) -> DemoSummary:
    """Run the registration over ``restaurants`` fake restaurants and summarise it.

    ``failure_rate`` is the share of service calls that fail (timeouts, 429s, 5xx and a
    few permanent errors); ``latency`` the mean fake call time in seconds;
    ``time_scale`` multiplies every timeout, retry wait and rate-limit window of the
    pipeline (0.005 turns the one-account-a-minute limit into one per 0.3 s).
    ``database_url`` (a SQLite file path or a database URL) makes the run durable: run
    again after an interruption and it resumes the stored job. ``lease_seconds`` is how
    soon work held by a killed run is taken back.
    """
    if storage is None and database_url is not None:
        from stepflow.storage.sql import SQLStorage

        storage = SQLStorage(database_url)
    console = console or Console()
    pipeline = load_pipeline(time_scale=time_scale)
    fakes = FakeServices(
        seed=seed,
        latency=latency,
        failures=FailureRates.realistic(failure_rate),
        retry_after=30 * time_scale,
    )
    async with Orchestrator(
        storage, handlers=bind(fakes), pipelines=[pipeline], lease_seconds=lease_seconds
    ) as orch:
        started = orch.clock.now()
        job = await orch.create_job(
            pipeline,
            fake_restaurants(restaurants, seed=seed),
            metadata={"demo": True, "seed": seed},
            idempotency_key=DEMO_IDEMPOTENCY_KEY,
            actor="demo",
        )
        resumed = job.created_at < started
        keys = {i.id: i.key for i in await all_items(orch, job.id, pipeline.steps[0].key)}
        view = ProgressView(console, keys)
        if resumed:
            view.note(f"resuming job {job.id} found in the storage")
        decisions: Decisions = PromptDecisions(console) if interactive else SimulatedDecisions(seed)
        operator = SimulatedOperator(orch, job.id, decisions, on_action=view.note)
        live = not interactive and console.is_terminal
        with _live(console, live) as show:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_follow, orch, job.id, view, show, started, decisions)
                snapshot = await operator.run()
                tg.cancel_scope.cancel()
            if show is not None:
                show.update(view.render(snapshot, orch.clock.now() - started))
        events = await _all_events(orch, job.id)
        summary = _summarise(snapshot, events, fakes, operator, resumed, orch.clock.now() - started)
    print_summary(console, summary)
    return summary


@contextlib.contextmanager
def _live(console: Console, enabled: bool) -> Iterator[Live | None]:
    if not enabled:
        yield None
        return
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        yield live


async def _follow(
    orch: Orchestrator,
    job_id: str,
    view: ProgressView,
    live: Live | None,
    started: float,
    decisions: Decisions,
) -> None:
    """Feed the view: new events (for retries), then a fresh snapshot, a few times a second.

    While a person is being asked a question, output holds (nothing is lost: the events
    are read once the answer is in).
    """
    after = 0
    while True:
        if getattr(decisions, "asking", False):
            await anyio.sleep(0.1)  # a refresh rate for people, not a wait for a state
            continue
        for event in await orch.events(job_id, after=after):
            view.on_event(event)
            after = event.seq
        snapshot = await orch.snapshot(job_id)
        elapsed = orch.clock.now() - started
        if live is not None:
            live.update(view.render(snapshot, elapsed))
        else:
            view.progress_line(snapshot, elapsed)
        if snapshot.job.status in _FINAL:
            return
        await anyio.sleep(0.1)  # a refresh rate for people, not a wait for a state


async def _all_events(orch: Orchestrator, job_id: str) -> list[Event]:
    events: list[Event] = []
    while batch := await orch.events(job_id, after=events[-1].seq if events else 0, limit=10_000):
        events.extend(batch)
    return events


def _summarise(
    snapshot: Snapshot,
    events: list[Event],
    fakes: FakeServices,
    operator: SimulatedOperator,
    resumed: bool,
    elapsed: float,
) -> DemoSummary:
    spans: dict[str, tuple[float, float]] = {}
    retried = 0
    for event in events:
        if event.data.get("to") == "retrying":
            retried += 1
        if event.step is not None and event.type in ("item.status", "substep.status"):
            first, _ = spans.get(event.step, (event.at, event.at))
            spans[event.step] = (first, event.at)
    return DemoSummary(
        job_id=snapshot.job.id,
        status=snapshot.job.status.value,
        resumed=resumed,
        restaurants=snapshot.totals["items"],
        completed=snapshot.totals["finished"],
        failed=snapshot.totals["failed"],
        retried=retried + len(operator.retried),
        injected=dict(fakes.injected),
        step_seconds={key: round(last - first, 3) for key, (first, last) in spans.items()},
        elapsed=round(elapsed, 3),
        operator_actions=operator.actions,
        step_counts={s.key: {k.value: n for k, n in s.counts.items()} for s in snapshot.steps},
    )


def print_summary(console: Console, summary: DemoSummary) -> None:
    """The closing tables: outcome, retries, injected failures and per-step timings."""
    outcome = Table(title="Registration demo — summary")
    outcome.add_column("What")
    outcome.add_column("Value", justify="right")
    injected = ", ".join(f"{k} {n}" for k, n in sorted(summary.injected.items())) or "none"
    for label, value in (
        ("job", f"{summary.job_id[:8]} ({summary.status}{', resumed' if summary.resumed else ''})"),
        ("restaurants", summary.restaurants),
        ("completed", summary.completed),
        ("failed", summary.failed),
        ("retried (automatic + by the operator)", summary.retried),
        ("injected failures", f"{sum(summary.injected.values())} ({injected})"),
        ("operator actions", summary.operator_actions),
        ("elapsed", f"{summary.elapsed:.2f}s"),
    ):
        outcome.add_row(label, str(value))
    timings = Table(title="Per step")
    timings.add_column("Step")
    timings.add_column("Span", justify="right")
    timings.add_column("Items", justify="right")
    for step, counts in summary.step_counts.items():
        span = summary.step_seconds.get(step)
        shown = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
        timings.add_row(step, "-" if span is None else f"{span:.2f}s", shown or "-")
    console.print(outcome)
    console.print(timings)
