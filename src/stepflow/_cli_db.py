"""``stepflow db``: migrate and inspect stepflow's tables in a SQL database.

Design decision: a thin typer sub-app over :mod:`stepflow.storage.sql.migrate`, mounted
by ``cli.py``. A database URL is only ever printed through ``redact_url`` (and any
driver message has the password masked too), so logs of a deploy step never hold one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ._errors import StepflowError

__all__ = ["db_app"]

T = TypeVar("T")

db_app = typer.Typer(
    name="db",
    help="Create or upgrade stepflow's tables in a SQLite or PostgreSQL database.",
    no_args_is_help=True,
    add_completion=False,
)

_URL = typer.Option(
    ...,
    "--database-url",
    help="A SQLite file path, sqlite:/// or postgresql:// URL.",
    show_default=False,
)
_PREFIX = typer.Option("stepflow_", "--prefix", help="Prefix of stepflow's table names.")
_SCHEMA = typer.Option(None, "--schema", help="PostgreSQL schema holding the tables.")


@db_app.callback()
def _db() -> None:
    """Migrations of stepflow's SQL tables."""


@db_app.command()
def upgrade(database_url: str = _URL, prefix: str = _PREFIX, schema: str | None = _SCHEMA) -> None:
    """Migrate stepflow's tables to the newest revision (safe to run concurrently)."""
    from .storage.sql import migrate

    revision = _run(
        database_url, lambda: migrate.upgrade(database_url, prefix=prefix, schema=schema)
    )
    typer.echo(f"{_redact(database_url)}: stepflow schema at revision {revision}{_mark(revision)}")


@db_app.command()
def current(database_url: str = _URL, prefix: str = _PREFIX, schema: str | None = _SCHEMA) -> None:
    """Print the database's stepflow revision ('none' when never migrated)."""
    from .storage.sql import migrate

    revision = _run(
        database_url, lambda: migrate.check_schema(database_url, prefix=prefix, schema=schema)
    )
    typer.echo(f"{revision or 'none'}{_mark(revision)}")


def _mark(revision: str | None) -> str:
    from .storage.sql.migrate import HEAD

    if revision == HEAD:
        return " (head)"
    return f" (behind head {HEAD}; run `stepflow db upgrade`)"


def _redact(url: str) -> str:
    from .storage.sql import redact_url

    return redact_url(url)


def _run(url: str, op: Callable[[], T]) -> T:
    """Run ``op``; report stepflow and database errors without the URL's password."""
    try:
        return op()
    except StepflowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except SQLAlchemyError as exc:
        message = str(getattr(exc, "orig", None) or exc).strip()
        password = _password(url)
        if password:
            message = message.replace(password, "***")
        message = _redact(message)
        typer.echo(f"error: {_redact(url)}: {type(exc).__name__}: {message}", err=True)
        raise typer.Exit(1) from None


def _password(url: str) -> str | None:
    if "://" not in url:
        return None
    try:
        return make_url(url).password
    except ArgumentError:
        return None
