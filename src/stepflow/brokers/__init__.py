"""Event brokers: how waiting readers and idle workers learn that something changed.

:func:`default_broker` picks one for a storage: LISTEN/NOTIFY for PostgreSQL, Unix
datagrams for a SQLite file, the in-process broker otherwise.
"""

from __future__ import annotations

import socket
import sys

from ..ports import EventBroker, Storage
from ._relay import RelayBroker
from .local import LocalEventBroker
from .postgres import PostgresEventBroker, channel_name
from .sockets import SocketEventBroker, wake_folder

__all__ = [
    "LocalEventBroker",
    "PostgresEventBroker",
    "RelayBroker",
    "SocketEventBroker",
    "channel_name",
    "default_broker",
    "wake_folder",
]


def default_broker(storage: Storage) -> EventBroker:
    """The broker an orchestrator on ``storage`` uses when the host gives none."""
    # Only an imported module can have made the storage: no SQL import for the others.
    module = sys.modules.get("stepflow.storage.sql.store")
    if module is None or not isinstance(storage, module.SQLStorage):
        return LocalEventBroker()
    if not storage.is_sqlite:
        return PostgresEventBroker.for_storage(storage)
    found = SocketEventBroker.for_storage(storage) if hasattr(socket, "AF_UNIX") else None
    return found or LocalEventBroker()
