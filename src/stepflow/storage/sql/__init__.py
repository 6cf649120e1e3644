"""SQL storage (SQLite and PostgreSQL) on SQLAlchemy 2; needs the ``sql`` extra."""

from .migrate import HEAD, SchemaTooNew, check_schema, current_revision, upgrade
from .store import SQLStorage, redact_url
from .tables import IDENTIFIER_PATTERN, Tables, build_tables

__all__ = [
    "HEAD",
    "IDENTIFIER_PATTERN",
    "SQLStorage",
    "SchemaTooNew",
    "Tables",
    "build_tables",
    "check_schema",
    "current_revision",
    "redact_url",
    "upgrade",
]
