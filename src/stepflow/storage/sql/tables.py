"""The SQL schema: one SQLAlchemy ``MetaData``, the single source of truth for tables.

Design decision: tables are built by a function of (prefix, schema) so a host can put
stepflow's tables beside its own — in its own PostgreSQL schema or behind a prefix —
and the migrations, the storage and the "migrations equal metadata" test all read the
same objects. Identifiers are validated against a strict pattern and left to
SQLAlchemy to quote; nothing is formatted into SQL text. Every query the storage runs
on a hot path (claim, rescue, retry times, listing a step, counters) has an index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from ..._errors import InvalidInput
from ..._states import ItemStatus

__all__ = [
    "IDENTIFIER_PATTERN",
    "VISIT_STATUS_INDEXES",
    "Tables",
    "build_tables",
    "partial_where",
    "status_is",
]

IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,40}$"
# ``None`` is stored as SQL NULL, not as the JSON text ``null``: nothing to serialise or
# parse for the many empty values on the hot path, and ``IS NULL`` means "no value".
_JSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


#: Visit indexes that hold a visit only while it has one status: (name, columns, status).
#: The claim query reads available visits by position, the retry query retrying ones by
#: due time, the rescuer processing ones by lease expiry; a status change then rewrites
#: at most two entries of these indexes instead of six, and a settled visit (nearly
#: every row of a finished job) is in none. Each still leads with ``status``, so a
#: planner without statistics ranks it as it ranks a full index (SQLite otherwise
#: prefers the job-status index for the retry query and scans a job's visits).
VISIT_STATUS_INDEXES: tuple[tuple[str, tuple[str, ...], ItemStatus], ...] = (
    ("visits_claim", ("status", "ready", "position"), ItemStatus.AVAILABLE),
    ("visits_retry_due", ("status", "next_attempt_at"), ItemStatus.RETRYING),
    ("visits_lease", ("status", "lease_expires_at"), ItemStatus.PROCESSING),
)


def partial_where(status: ItemStatus) -> dict[str, Any]:
    """The dialect options that make an index partial: only rows with ``status``."""
    clause = text(f"status = '{status.value}'")
    return {"sqlite_where": clause, "postgresql_where": clause}


def status_is(column: Any, status: ItemStatus) -> ColumnElement[bool]:
    """``column = '<status>'`` with the value written into the SQL, not bound: a planner
    uses a partial index only for a query whose text implies the index's predicate."""
    value: ColumnElement[bool] = column == literal_column(f"'{status.value}'")
    return value  # the literal is an enum value, never user text


#: Small rows found by their composite primary key (counters and events) are
#: kept in the key's own B-tree on SQLite (``WITHOUT ROWID``): a write updates one tree
#: instead of the table and its key index.
_KEYED_ROWS: dict[str, Any] = {"sqlite_with_rowid": False}


def _check(name: str, value: str, allow_empty: bool = False) -> None:
    if allow_empty and value == "":
        return
    if not re.fullmatch(IDENTIFIER_PATTERN, value):
        raise InvalidInput(
            f"{name} {value!r} must match {IDENTIFIER_PATTERN} (lower-case letters, digits, _)"
        )


@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    jobs: Table
    definitions: Table
    items: Table
    visits: Table
    counts: Table
    substep_counts: Table
    events: Table
    actions: Table
    limits: Table
    limit_slots: Table
    prefix: str
    schema: str | None


def build_tables(prefix: str = "stepflow_", schema: str | None = None) -> Tables:
    """Build stepflow's tables with a name ``prefix`` in an optional PostgreSQL ``schema``."""
    _check("table prefix", prefix, allow_empty=True)
    if schema is not None:
        _check("schema", schema)
    md = MetaData(schema=schema)
    p = prefix

    jobs = Table(
        f"{p}jobs",
        md,
        Column("id", String(64), primary_key=True),
        Column("pipeline", String(128), nullable=False),
        Column("version", String(128), nullable=False),
        Column("definition_hash", String(64), nullable=False),
        Column("steps", _JSON, nullable=False),
        Column("status", String(16), nullable=False),
        Column("auto_process", Boolean, nullable=False),
        Column("metadata", _JSON, nullable=False),
        Column("idempotency_key", String(256), nullable=True, unique=True),
        Column("created_by", String(256), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("started_at", Float, nullable=True),
        Column("finished_at", Float, nullable=True),
        Column("seq", Integer, nullable=False, default=0),
        Column("item_count", Integer, nullable=False, default=0),
        Column("started_steps", _JSON, nullable=False),
        Column("step_statuses", _JSON, nullable=False),
        Index(f"{p}jobs_status", "status"),
    )
    # A pipeline definition is stored once, by its content hash: the jobs made from it
    # name the hash, so a job's row stays small (a group commit rewrites it often).
    definitions = Table(
        f"{p}definitions",
        md,
        Column("hash", String(64), primary_key=True),
        Column("pipeline", String(128), nullable=False),
        Column("version", String(128), nullable=False),
        Column("definition", _JSON, nullable=False),
        Column("created_at", Float, nullable=False),
    )
    items = Table(
        f"{p}items",
        md,
        Column("id", String(64), primary_key=True),
        Column("job_id", String(64), ForeignKey(jobs.c.id, ondelete="CASCADE"), nullable=False),
        Column("key", String(256), nullable=False),
        Column("data", _JSON, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("position", Integer, nullable=False),
        Column("parent_id", String(64), nullable=True),
        Index(f"{p}items_job_position", "job_id", "position"),
    )
    visits = Table(
        f"{p}visits",
        md,
        Column("id", String(200), primary_key=True),
        Column("job_id", String(64), ForeignKey(jobs.c.id, ondelete="CASCADE"), nullable=False),
        Column("item_id", String(64), nullable=False),
        Column("step", String(128), nullable=False),
        Column("status", String(16), nullable=False),
        Column("ready", Boolean, nullable=False, default=False),
        Column("concurrency", Integer, nullable=False),
        Column("position", Integer, nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("retry_base", Integer, nullable=False, default=0),
        Column("token", Integer, nullable=False, default=0),
        Column("next_attempt_at", Float, nullable=True),
        Column("lease_owner", String(128), nullable=True),
        Column("lease_expires_at", Float, nullable=True),
        Column("input", _JSON, nullable=True),
        Column("output", _JSON, nullable=True),
        Column("error", _JSON, nullable=True),
        Column("reason", Text, nullable=True),
        Column("substeps", _JSON, nullable=False),
        Column("progress", _JSON, nullable=True),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("started_at", Float, nullable=True),
        Column("finished_at", Float, nullable=True),
        Index(f"{p}visits_step_listing", "job_id", "step", "position"),
        *(
            Index(f"{p}{name}", *columns, **partial_where(status))
            for name, columns, status in VISIT_STATUS_INDEXES
        ),
        Index(f"{p}visits_item", "item_id"),
    )
    counts = Table(
        f"{p}counts",
        md,
        Column("job_id", String(64), ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
        Column("step", String(128), primary_key=True),
        Column("status", String(16), primary_key=True),
        Column("n", Integer, nullable=False),
        **_KEYED_ROWS,
    )
    substep_counts = Table(
        f"{p}substep_counts",
        md,
        Column("job_id", String(64), ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
        Column("step", String(128), primary_key=True),
        Column("substep", String(128), primary_key=True),
        Column("status", String(16), primary_key=True),
        Column("n", Integer, nullable=False),
        **_KEYED_ROWS,
    )
    events = Table(
        f"{p}events",
        md,
        Column("job_id", String(64), ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("type", String(32), nullable=False),
        Column("at", Float, nullable=False),
        Column("actor", String(256), nullable=False),
        Column("step", String(128), nullable=True),
        Column("item_id", String(64), nullable=True),
        Column("data", _JSON, nullable=False),
        **_KEYED_ROWS,
    )
    actions = Table(
        f"{p}actions",
        md,
        Column("job_id", String(64), ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
        Column("action_id", String(256), primary_key=True),
        Column("result", _JSON, nullable=True),
        Column("at", Float, nullable=False),
    )
    # Global limits (stepflow.storage.sql.limits): a row per key with the recent start
    # times of its rate limit, and a row per concurrency slot with its holder's lease.
    limits = Table(
        f"{p}limits",
        md,
        Column("key", String(128), primary_key=True),
        Column("starts", _JSON, nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    limit_slots = Table(
        f"{p}limit_slots",
        md,
        Column("key", String(128), primary_key=True),
        Column("slot", Integer, primary_key=True, autoincrement=False),
        Column("holder", String(128), nullable=True),
        Column("expires_at", Float, nullable=True),
    )
    return Tables(
        md,
        jobs,
        definitions,
        items,
        visits,
        counts,
        substep_counts,
        events,
        actions,
        limits,
        limit_slots,
        prefix,
        schema,
    )
