"""The PostgreSQL broker: wake-ups across processes with LISTEN/NOTIFY.

Design decision: one dedicated psycopg 3 async connection per process LISTENs on a
channel named after the storage's schema and table prefix (two apps in one database
never wake each other), and a second one sends ``pg_notify(channel, message)`` with
both as bound parameters; only LISTEN needs the name in SQL text, where it is checked
against a strict pattern and quoted by psycopg. Everything else — local delivery,
merging bursts, ids-only messages under 8000 bytes, reconnecting with backoff and
polling while disconnected — is :class:`~stepflow.brokers._relay.RelayBroker`'s. A
quiet link is proven alive every ``health_interval`` seconds with a ``SELECT 1`` (and
TCP keepalives), so a half-open connection is noticed instead of silently waiting.
PostgreSQL delivers notifications only to connections on the same database, so the
channel is scoped by schema and prefix, not by database name. psycopg's async
connections need the asyncio event loop; under any other backend the broker stays
disconnected and waits poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any, Self

import anyio

from .._errors import InvalidInput
from ._relay import RelayBroker

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL_PATTERN", "PostgresEventBroker", "channel_name"]

log = logging.getLogger("stepflow.brokers")

#: What a channel name must look like (it is an SQL identifier, at most 63 bytes).
CHANNEL_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


def channel_name(prefix: str = "stepflow_", schema: str | None = None) -> str:
    """The channel for the tables at ``prefix`` in ``schema``: ``<prefix>wake_<digest>``."""
    digest = hashlib.blake2b(f"{schema or ''}\x00{prefix}".encode(), digest_size=6).hexdigest()
    return _checked(f"{prefix}wake_{digest}")


def _checked(channel: str) -> str:
    if not re.fullmatch(CHANNEL_PATTERN, channel):
        raise InvalidInput(f"channel {channel!r} must match {CHANNEL_PATTERN}")
    return channel


def _conninfo(url: str) -> str:
    """A libpq URL for a SQLAlchemy-style ``postgresql[+driver]://`` URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise InvalidInput(
            f"PostgresEventBroker needs a postgresql:// URL, got {parsed.drivername}"
        )
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresEventBroker(RelayBroker):
    """Notifications between every process on one PostgreSQL database.

    ``url`` is the database; ``prefix`` and ``schema`` (as given to the storage) name the
    channel, or ``channel`` names it outright.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "stepflow_",
        schema: str | None = None,
        channel: str | None = None,
        health_interval: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self._conninfo = _conninfo(url)
        self.channel = _checked(channel) if channel is not None else channel_name(prefix, schema)
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self._sender: psycopg.AsyncConnection[Any] | None = None

    @classmethod
    def for_storage(cls, storage: Any) -> Self:
        """The broker for a PostgreSQL ``SQLStorage`` (its URL, prefix and schema)."""
        return cls(storage.url, prefix=storage.tables.prefix, schema=storage.tables.schema)

    def __repr__(self) -> str:
        return f"PostgresEventBroker(channel={self.channel!r})"

    async def _connect(self, role: str) -> psycopg.AsyncConnection[Any]:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=f"stepflow-{role}-{self.origin}",
            connect_timeout=max(1, int(self.connect_timeout)),
            keepalives=1,
            keepalives_idle=max(1, int(self.health_interval)),
            keepalives_interval=5,
            keepalives_count=3,
        )

    @staticmethod
    def _on_asyncio() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    async def _listen(self) -> None:
        if not self._on_asyncio():
            log.warning("PostgresEventBroker needs asyncio; waking by polling instead")
            await anyio.sleep_forever()
        from psycopg import sql

        conn = await self._connect("listen")
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self._set_connected(True)
            while True:
                async for notice in conn.notifies(timeout=self.health_interval):
                    self._deliver(notice.payload)
                with anyio.fail_after(self.connect_timeout):
                    await conn.execute("SELECT 1")  # a quiet link: prove it is alive

    async def _send(self, messages: list[str]) -> None:
        if not self._on_asyncio():
            return
        if self._sender is None or self._sender.closed:
            self._sender = await self._connect("notify")
        try:
            with anyio.fail_after(self.connect_timeout):
                for message in messages:
                    await self._sender.execute("SELECT pg_notify(%s, %s)", (self.channel, message))
        except BaseException:
            sender, self._sender = self._sender, None
            with anyio.CancelScope(shield=True):
                await sender.close()
            raise

    async def _close_link(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()
