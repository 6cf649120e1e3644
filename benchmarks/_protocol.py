"""What a benchmark program tells the suite: one JSON object per line on stdout.

Design decision: every measured run — stepflow's, the database's own limit, each peer's —
is a separate process that prints ``{"kind": ...}`` lines. The suite reads them, so a run
in another virtual environment (the peers) speaks the same language, a run's peak RSS is
its own process's, and a run that overruns its time budget can be killed with its whole
process group while its last ``progress`` line still says how far it got.

Kinds: ``progress`` (``done`` transitions after ``elapsed`` seconds, and the peak
``rss`` so far), ``cleanup`` (a PostgreSQL schema or a folder the suite removes if the
run is killed), ``result`` (the figures) and ``error`` (why the run could not measure
anything).
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "ProgressReporter",
    "emit",
    "monotonic_ns",
    "peak_rss_mb",
    "percentiles_ms",
]


def emit(kind: str, **data: Any) -> None:
    """Print one protocol line and flush it at once (the suite may kill us any time)."""
    sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def monotonic_ns() -> int:
    """The system-wide monotonic clock: comparable between processes on one machine."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def percentiles_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p95, min and max of latencies given in nanoseconds, in milliseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"p50": math.nan, "p95": math.nan, "min": math.nan, "max": math.nan}
    rank95 = max(0, math.ceil(0.95 * len(ordered)) - 1)
    return {
        "p50": statistics.median(ordered) / 1e6,
        "p95": ordered[rank95] / 1e6,
        "min": ordered[0] / 1e6,
        "max": ordered[-1] / 1e6,
        "n": len(ordered),
    }


class ProgressReporter:
    """Emits ``progress`` lines from a counter the run updates (call :meth:`tick`)."""

    def __init__(self, count: Callable[[], int], every: float = 1.0) -> None:
        self.count = count
        self.every = every
        self.started = time.perf_counter()
        self._last = self.started

    def restart(self) -> None:
        self.started = self._last = time.perf_counter()

    def tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= self.every:
            self._last = now
            emit("progress", done=self.count(), elapsed=now - self.started, rss=peak_rss_mb())
