"""The SQLite broker: wake-ups across processes on one machine, by Unix datagrams.

Design decision: SQLite has no notification channel, and polling the file every few
milliseconds costs every process a read per tick. Instead each process binds one Unix
datagram socket in a folder beside the database file (``jobs.db.wake/``, mode 0700)
and publishing sends one tiny datagram — the same ids-only message as PostgreSQL's —
to every socket in the folder. Sending never blocks: a full receiver already has
wake-ups queued and is skipped; a socket nobody listens on (its process died) refuses
the datagram and is removed. A received datagram only makes a process re-read the
database, so a stray or forged one costs a read, nothing more. A folder path too long
for a socket address (about 100 bytes) moves to the temporary directory, named by a
digest of the database's real path, so every process still finds the same folder.
Local delivery, merging and the polling fallback are
:class:`~stepflow.brokers._relay.RelayBroker`'s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.abc

from ._relay import RelayBroker

__all__ = ["SocketEventBroker", "wake_folder"]

log = logging.getLogger("stepflow.brokers")

_MAX_SOCKET_PATH = 100  #: below the smallest sun_path (104 on macOS, 108 on Linux)
_NAME_LENGTH = 32  #: "<pid>-<12 hex>.sock", generously


def wake_folder(database: str | Path) -> Path:
    """The folder of wake-up sockets for the SQLite file ``database``."""
    real = Path(os.path.realpath(database))
    beside = real.with_name(real.name + ".wake")
    if len(str(beside)) + 1 + _NAME_LENGTH <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.blake2b(str(real).encode(), digest_size=10).hexdigest()
    return Path(tempfile.gettempdir()) / f"stepflow-wake-{digest}"


class SocketEventBroker(RelayBroker):
    """Notifications between the processes sharing one SQLite file on this machine."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock"
        self._receiver: anyio.abc.UNIXDatagramSocket | None = None
        self._sender: socket.socket | None = None

    @classmethod
    def for_storage(cls, storage: Any) -> Self | None:
        """The broker for a SQLite ``SQLStorage`` on a file, or ``None`` (in memory, or
        no Unix sockets on this platform)."""
        from sqlalchemy.engine import make_url

        database = make_url(storage.url).database
        if not hasattr(socket, "AF_UNIX") or not database or database == ":memory:":
            return None
        return cls(wake_folder(database))

    def __repr__(self) -> str:
        return f"SocketEventBroker({str(self.folder)!r})"

    async def _listen(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        receiver = await anyio.create_unix_datagram_socket(local_path=self.path, local_mode=0o600)
        self._receiver = receiver
        try:
            async with receiver:
                self._set_connected(True)
                while True:
                    data, _ = await receiver.receive()
                    self._deliver(data)
        finally:
            self._receiver = None
            self.path.unlink(missing_ok=True)

    async def _send(self, messages: list[str]) -> None:
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        try:
            peers = [
                entry.path
                for entry in os.scandir(self.folder)
                if entry.name.endswith(".sock") and entry.path != str(self.path)
            ]
        except FileNotFoundError:
            return  # nobody listens yet
        data = [message.encode() for message in messages]
        for peer in peers:
            self._send_to(peer, data)

    def _send_to(self, peer: str, data: list[bytes]) -> None:
        assert self._sender is not None
        for datagram in data:
            try:
                self._sender.sendto(datagram, peer)
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody listens there: its process is gone. Clean it up.
                with suppress(OSError):
                    os.unlink(peer)
                return
            except BlockingIOError:
                return  # its queue is full: it has wake-ups waiting already
            except OSError as exc:  # not one of ours, or gone strange: skip it
                log.debug("wake-up datagram to %s failed (%s)", peer, exc)
                return

    async def _close_link(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()
        self.path.unlink(missing_ok=True)
