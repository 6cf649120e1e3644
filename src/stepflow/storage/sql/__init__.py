"""SQL storage (SQLite and PostgreSQL) on SQLAlchemy 2; needs the ``sql`` extra."""

from .store import SQLStorage, redact_url
from .tables import IDENTIFIER_PATTERN, Tables, build_tables

__all__ = ["IDENTIFIER_PATTERN", "SQLStorage", "Tables", "build_tables", "redact_url"]
