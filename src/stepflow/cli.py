"""The ``stepflow`` command line.

Design decision: a thin typer app over public APIs. ``stepflow demo`` runs the real
registration pipeline (the plugin's own demo) so the first thing a user runs is the
workflow the library was made for, not a toy.
"""

from __future__ import annotations

import anyio
import typer
from rich.console import Console

__all__ = ["app", "main"]

app = typer.Typer(
    name="stepflow",
    help="Durable step pipelines for work that people and machines share.",
    no_args_is_help=True,
    add_completion=False,
)


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
) -> None:
    """Run the restaurant registration pipeline end to end with fake services."""
    from stepflow_registration.demo import run_demo

    console = Console()
    summary = anyio.run(
        lambda: run_demo(
            restaurants=restaurants,
            seed=seed,
            failure_rate=failure_rate,
            latency=latency,
            time_scale=time_scale,
            interactive=interactive,
            console=console,
        )
    )
    settled = summary.completed + summary.failed == summary.restaurants
    raise typer.Exit(0 if settled else 1)


def main() -> None:
    """Entry point of the ``stepflow`` script."""
    app()
