"""The ``stepflow`` command line.

Design decision: a thin typer app over public APIs. ``stepflow demo`` runs the real
registration pipeline (the plugin's own demo) so the first thing a user runs is the
workflow the library was made for, not a toy.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
import typer
from rich.console import Console

from ._cli_db import db_app

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="stepflow",
    help="Durable step pipelines for work that people and machines share.",
    no_args_is_help=True,
    add_completion=False,
)


app.add_typer(db_app, name="db")


@app.callback()
def _root() -> None:
    """stepflow command line."""


@app.command()
def demo(
    restaurants: int = typer.Option(20, min=1, max=100_000, help="How many fake restaurants."),
    seed: int = typer.Option(1, help="Seed for the fake services (same seed, same run)."),
    failure_rate: float = typer.Option(
        0.06, min=0.0, max=1.0, help="Share of service calls that fail (then retry)."
    ),
    latency: float = typer.Option(0.03, min=0.0, help="Fake service latency, in seconds."),
    time_scale: float = typer.Option(
        0.005,
        min=0.0,
        help="Scale for the pipeline's timeouts, retry waits and rate limits (1 = real).",
    ),
    interactive: bool = typer.Option(
        False, "--interactive", help="Answer the person steps yourself at prompts."
    ),
    database_url: str = typer.Option(
        "stepflow-demo.db",
        help="SQLite file (the default, in this directory) or a postgresql:// URL.",
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="Start a new run instead of resuming the stored one."
    ),
) -> None:
    """Run the restaurant registration pipeline end to end with fake services.

    The run is stored in the database: interrupt it (Ctrl-C, or kill -9) and run the
    same command again to resume where it stopped.
    """
    from stepflow_registration.demo import run_demo

    console = Console()
    if fresh:
        _forget_demo(database_url, console)
    demo_run = partial(
        run_demo,
        restaurants=restaurants,
        seed=seed,
        failure_rate=failure_rate,
        latency=latency,
        time_scale=time_scale,
        interactive=interactive,
        console=console,
        database_url=database_url,
    )
    summary = anyio.run(_until_signalled, demo_run)
    if summary is None:
        console.print("interrupted: work in flight was handed back; run again to resume")
        raise typer.Exit(130)
    settled = summary.completed + summary.failed == summary.restaurants
    raise typer.Exit(0 if settled else 1)


async def _until_signalled(run: Callable[[], Awaitable[T]]) -> T | None:
    """Run ``run`` until it ends or SIGINT/SIGTERM arrives; then stop it cleanly.

    Stopping goes through anyio cancellation, so running handlers are cancelled and the
    items they held are handed back to the database before the process exits.
    """
    result: list[T] = []

    async def main(scope: anyio.CancelScope) -> None:
        result.append(await run())
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(main, tg.cancel_scope)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                tg.cancel_scope.cancel()
                break
    return result[0] if result else None


@app.command()
def worker(
    database_url: str = typer.Option(..., help="The shared database (SQLite file or URL)."),
    app_target: str = typer.Option(
        ..., "--app", help="The host's definitions: module:attribute naming a stepflow.App."
    ),
    prefix: str = typer.Option("stepflow_", help="Table name prefix."),
    schema: str | None = typer.Option(None, help="PostgreSQL schema of the tables."),
    concurrency: int = typer.Option(64, min=1, help="Handlers this process runs at once."),
    grace: float = typer.Option(
        30.0, min=0.0, help="Seconds running handlers get to finish on SIGTERM/SIGINT."
    ),
    lease_seconds: float = typer.Option(30.0, min=1.0, help="Lease on claimed work."),
) -> None:
    """Run a worker: claim and run work from the shared database until SIGTERM.

    On SIGTERM (or Ctrl-C) it stops claiming, lets running handlers finish within the
    grace period, and hands back whatever is left so another worker takes it at once.
    """
    from ._app import load_app
    from .storage.sql import SQLStorage, redact_url

    sys.path.insert(0, os.getcwd())  # like other app servers: --app resolves from here
    console = Console()
    definitions = load_app(app_target)
    storage = SQLStorage(database_url, prefix=prefix, schema=schema)

    async def serve() -> bool:
        orchestrator = definitions.orchestrator(
            storage, max_concurrency=concurrency, lease_seconds=lease_seconds
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with orchestrator as orch:
                console.print(f"worker {orch.owner} running on {redact_url(database_url)}")
                async for received in signals:
                    console.print(f"{signal.Signals(received).name}: draining for {grace:g} s")
                    finished = await orch.drain(grace)
                    console.print("drained" if finished else "grace over: handing work back")
                    return finished
        return True  # pragma: no cover - the signal loop only ends by returning

    raise typer.Exit(0 if anyio.run(serve) else 3)


def _forget_demo(database_url: str, console: Console) -> None:
    """Delete the demo's SQLite file (and its WAL files); refuse for server databases."""
    if "://" in database_url and not database_url.startswith("sqlite"):
        console.print("--fresh deletes a SQLite file only; drop the demo tables yourself")
        raise typer.Exit(2)
    path = Path(database_url.split(":///", 1)[-1])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    """Entry point of the ``stepflow`` script."""
    app()
