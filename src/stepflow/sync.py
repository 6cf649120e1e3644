"""The synchronous facade, for Flask, Django and scripts.

Design decision: no logic lives here. :class:`SyncOrchestrator` starts an event loop in
a background thread (an anyio blocking portal), runs the async :class:`Orchestrator`
there, and each method forwards to the async method of the same name through the
portal — so sync and async hosts run exactly the same code, and the engine keeps
working in the background between calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from functools import partial
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._models import Event
from ._orchestrator import Orchestrator

__all__ = ["SyncOrchestrator"]

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(
    method: Callable[Concatenate[Orchestrator, P], Awaitable[R]],
) -> Callable[Concatenate[SyncOrchestrator, P], R]:
    def call(self: SyncOrchestrator, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.portal.call(partial(method, self.orchestrator, *args, **kwargs))

    call.__name__ = method.__name__
    call.__qualname__ = f"SyncOrchestrator.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class SyncOrchestrator:
    """``with SyncOrchestrator(...) as orch:`` — same arguments and verbs, without ``await``."""

    def __init__(self, *args: Any, backend: str = "asyncio", **kwargs: Any) -> None:
        self.orchestrator = Orchestrator(*args, **kwargs)
        self._backend = backend
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("use SyncOrchestrator in a with block (or call open())")
        return self._portal

    def open(self) -> Self:
        stack = ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal(self._backend))
            stack.enter_context(self._portal.wrap_async_context_manager(self.orchestrator))
        except BaseException:
            stack.close()
            self._portal = None
            raise
        self._stack = stack
        return self

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self._portal = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register(self, *args: Any, **kwargs: Any) -> Any:
        return self.orchestrator.register(*args, **kwargs)

    def watch(self, job_id: str, *, after: int = 0, until_final: bool = True) -> Iterator[Event]:
        """Yield events as they happen (see :meth:`Orchestrator.watch`)."""
        stream = self.orchestrator.watch(job_id, after=after, until_final=until_final)
        try:
            while True:
                try:
                    yield self.portal.call(partial(anext, stream))
                except StopAsyncIteration:
                    return
        finally:
            self.portal.call(stream.aclose)  # type: ignore[attr-defined,call-arg]

    create_job = _blocking(Orchestrator.create_job)
    start_job = _blocking(Orchestrator.start_job)
    pause_job = _blocking(Orchestrator.pause_job)
    resume_job = _blocking(Orchestrator.resume_job)
    cancel_job = _blocking(Orchestrator.cancel_job)
    process_step = _blocking(Orchestrator.process_step)
    pass_items = _blocking(Orchestrator.pass_items)
    discard_items = _blocking(Orchestrator.discard_items)
    submit = _blocking(Orchestrator.submit)
    retry_items = _blocking(Orchestrator.retry_items)
    skip_item = _blocking(Orchestrator.skip_item)
    mark_substep = _blocking(Orchestrator.mark_substep)
    reset_substep = _blocking(Orchestrator.reset_substep)
    get_job = _blocking(Orchestrator.get_job)
    snapshot = _blocking(Orchestrator.snapshot)
    list_items = _blocking(Orchestrator.list_items)
    events = _blocking(Orchestrator.events)
    wait = _blocking(Orchestrator.wait)
