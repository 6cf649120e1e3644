"""The shared half of the brokers that reach other processes.

Design decision: a relay broker is the local broker plus a link. Every publish is
delivered in this process at once (no round trip) and queued for the other
processes; one background task sends the queue, so a burst of publishes while a send
is in flight goes out as one merged message (the highest ``seq`` per job, one "work"
flag). Messages carry ids only — ``{"o": origin, "w": 1, "j": {job_id: seq}}`` — and are
split to stay under :attr:`RelayBroker.max_payload` bytes. Received messages are
delivered locally, except this process's own. The link reconnects with jittered
exponential backoff; while it is down, every wait is cut to
:attr:`RelayBroker.disconnected_poll` seconds, so readers and workers fall back to
polling, and local waiters are woken on each change of the link (a lost link may
have lost messages). Subclasses only open the link, read from it and send on it.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from abc import abstractmethod
from contextlib import AsyncExitStack
from typing import Any

import anyio

from ..ports import EventBroker
from .local import LocalEventBroker

__all__ = ["RelayBroker", "decode_message", "encode_messages"]

log = logging.getLogger("stepflow.brokers")

_MAX_QUEUED_JOBS = 10_000  #: beyond this, queued job notices are merged into "work"


def encode_messages(origin: str, jobs: dict[str, int], work: bool, max_bytes: int) -> list[str]:
    """The messages that say ``jobs`` (id → seq) and ``work``, each under ``max_bytes``."""
    messages: list[str] = []
    batch: dict[str, int] = {}
    size = len(json.dumps({"o": origin, "w": 1, "j": {}}, separators=(",", ":")))
    used = size
    for job_id, seq in jobs.items():
        entry = len(json.dumps({job_id: seq}, separators=(",", ":")))  # '{"id":n}' ~ '"id":n,'
        if batch and used + entry > max_bytes:
            messages.append(_dump(origin, batch, False))
            batch, used = {}, size
        batch[job_id] = seq
        used += entry
    if batch or work:
        messages.append(_dump(origin, batch, work))
    return messages


def _dump(origin: str, jobs: dict[str, int], work: bool) -> str:
    message: dict[str, Any] = {"o": origin}
    if work:
        message["w"] = 1
    if jobs:
        message["j"] = jobs
    return json.dumps(message, separators=(",", ":"))


def decode_message(data: str | bytes) -> tuple[str, dict[str, int], bool] | None:
    """``(origin, jobs, work)`` from a message, or ``None`` for anything malformed."""
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("o"), str):
        return None
    raw_jobs = message.get("j", {})
    if not isinstance(raw_jobs, dict):
        return None
    jobs = {
        k: v
        for k, v in raw_jobs.items()
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
    }
    return message["o"], jobs, message.get("w") == 1


class RelayBroker(EventBroker):
    """An event broker whose notifications also reach other processes."""

    #: The engine's poll while connected: only a change nobody announced (a lost
    #: notification, a hand-made change in the database) waits this long.
    fallback_poll: float = 2.0
    #: The longest any wait lasts while the link is down (the polling fallback).
    disconnected_poll: float = 1.0
    #: Largest message sent, in bytes (PostgreSQL refuses NOTIFY payloads of 8000).
    max_payload: int = 7900
    #: Reconnect backoff: first and longest wait, in seconds.
    backoff: tuple[float, float] = (0.05, 5.0)

    def __init__(self) -> None:
        self.local = LocalEventBroker()
        self.origin = uuid.uuid4().hex[:12]
        self._out_jobs: dict[str, int] = {}
        self._out_work = False
        self._out_wake: anyio.Event | None = None
        self._connected = False
        self._link_changed = anyio.Event()
        self._stack: AsyncExitStack | None = None
        self.sent = 0  #: messages sent (for tests and benchmarks)
        self.received = 0  #: messages received from other processes
        self.disconnects = 0  #: times the link went down after being up

    @property
    def connected(self) -> bool:
        """Whether the link to the other processes is up (else waits poll)."""
        return self._connected

    async def link_changed(self) -> None:
        """Return at the next time the link goes up or down (for tests and monitoring)."""
        await self._link_changed.wait()

    # -- the port ----------------------------------------------------------------------

    def publish_job(self, job_id: str, seq: int) -> None:
        self.local.publish_job(job_id, seq)
        if seq > self._out_jobs.get(job_id, 0):
            if len(self._out_jobs) >= _MAX_QUEUED_JOBS:
                self._out_jobs.clear()  # readers re-read anyway; workers get "work"
                self._out_work = True
            self._out_jobs[job_id] = seq
        self._kick()

    def publish_work(self) -> None:
        self.local.publish_work()
        self._out_work = True
        self._kick()

    def wake_here(self) -> None:
        self.local.publish_work()

    async def wait_job(self, job_id: str, after: int, timeout: float | None) -> bool:
        return await self.local.wait_job(job_id, after, self._cap(timeout))

    async def wait_work(self, timeout: float | None) -> bool:
        return await self.local.wait_work(self._cap(timeout))

    def _cap(self, timeout: float | None) -> float | None:
        if self._connected:
            return timeout
        poll = self.disconnected_poll
        return poll if timeout is None else min(timeout, poll)

    def _kick(self) -> None:
        if self._out_wake is not None:
            self._out_wake.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the link and start sending; called once, inside the event loop."""
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        self._out_wake = anyio.Event()
        if self._out_jobs or self._out_work:
            self._out_wake.set()
        tg.start_soon(self._send_forever)
        tg.start_soon(self._listen_forever)
        self._stack = stack

    async def aclose(self) -> None:
        """Stop; send what is still queued (briefly), then close the link."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._set_connected(False)
        if self._out_jobs or self._out_work:
            with anyio.move_on_after(1.0, shield=True):
                await self._flush()
        with anyio.CancelScope(shield=True):
            await self._close_link()

    # -- sending -----------------------------------------------------------------------

    async def _send_forever(self) -> None:
        failures = 0
        while True:
            assert self._out_wake is not None
            await self._out_wake.wait()
            self._out_wake = anyio.Event()
            try:
                await self._flush()
            except Exception as exc:  # noqa: BLE001 - the link is down: try again soon
                failures += 1
                delay = self._backoff_delay(failures)
                log.warning("could not notify other processes (%s); again in %.2f s", exc, delay)
                await anyio.sleep(delay)
                self._out_wake.set()
            else:
                failures = 0

    async def _flush(self) -> None:
        jobs, work = self._out_jobs, self._out_work
        if not jobs and not work:
            return
        self._out_jobs, self._out_work = {}, False
        try:
            messages = encode_messages(self.origin, jobs, work, self.max_payload)
            await self._send(messages)
            self.sent += len(messages)
        except BaseException:
            for job_id, seq in jobs.items():  # offer them again, merged with newer ones
                if seq > self._out_jobs.get(job_id, 0):
                    self._out_jobs[job_id] = seq
            self._out_work = self._out_work or work
            raise

    # -- receiving ---------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except Exception as exc:  # noqa: BLE001 - reconnect below
                if self._connected:
                    log.warning("wake-up link lost (%s); polling until it is back", exc)
                else:
                    log.debug("wake-up link not available (%s)", exc)
            was_connected = self._connected
            self._set_connected(False)
            failures = 1 if was_connected else failures + 1
            await anyio.sleep(self._backoff_delay(failures))

    def _backoff_delay(self, failures: int) -> float:
        first, longest = self.backoff
        delay: float = min(longest, first * 2 ** min(failures - 1, 16))
        return delay * random.uniform(0.5, 1.0)  # jitter, not secrets

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self.disconnects += not connected
            changed, self._link_changed = self._link_changed, anyio.Event()
            changed.set()
            # Messages may have been missed while the link was down, and waits must now
            # follow the new state: let every local worker look again.
            self.local.publish_work()

    def _deliver(self, data: str | bytes) -> None:
        """Hand a received message to local waiters (called by :meth:`_listen`)."""
        decoded = decode_message(data)
        if decoded is None:
            log.debug("ignored a malformed wake-up message")
            return
        origin, jobs, work = decoded
        if origin == self.origin:
            return
        self.received += 1
        for job_id, seq in jobs.items():
            self.local.publish_job(job_id, seq)
        if work:
            self.local.publish_work()

    # -- what a link does --------------------------------------------------------------

    @abstractmethod
    async def _listen(self) -> None:
        """Open the link, call ``_set_connected(True)``, and :meth:`_deliver` every
        message received until the link fails (raise) or the task is cancelled."""

    @abstractmethod
    async def _send(self, messages: list[str]) -> None:
        """Send ``messages`` to the other processes; raise if the link is down."""

    async def _close_link(self) -> None:
        """Release what sending holds (called once, at the end)."""
