"""The in-process executor: handlers run inside the host's event loop.

Design decision: this is the durable replacement for fire-and-forget background work.
``async`` handlers are awaited in the orchestrator's own task group; plain functions
run in worker threads under a capacity limit, so a blocking call never stalls the
loop. Cancellation abandons a thread rather than waiting for it — the handler's
context says it was cancelled, and its late result is refused by the fencing token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from ..ports import Executor

__all__ = ["InProcessExecutor"]


class InProcessExecutor(Executor):
    """Awaits async handlers; runs plain ones in at most ``max_threads`` threads."""

    def __init__(self, max_threads: int = 16) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self.max_threads = max_threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, func: Callable[[Any], Any], argument: Any, *, is_async: bool) -> Any:
        if is_async:
            return await func(argument)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_threads)
        return await anyio.to_thread.run_sync(
            func, argument, limiter=self._limiter, abandon_on_cancel=True
        )
