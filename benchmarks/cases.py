"""The vocabulary of the plan: sizes, targets, figures and cases, as frozen data.

Design decision: a run is described entirely by data — which program, with which
arguments, which figures it yields, what limit and which peers each figure is compared
with, what target it is held against — so the plan (``plan``, ``plan_peers``) is a
list of these objects built from one :class:`Sizes`, and the conductor and the report
never need to know what a workload does. Targets are printed with a met/missed mark;
nothing asserts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["STEPS", "Case", "Metric", "Sizes", "Target", "latency", "rate"]

STEPS = 6


@dataclass(frozen=True)
class Sizes:
    """Every workload size; full mode is the issue's sizes, ``--quick`` is small."""

    repeat: int = 3
    budget: float = 300.0  #: seconds one run may take before it is stopped
    limit_seconds: float = 3.0
    w1_jobs: int = 1000
    w2_items: int = 10_000
    w2_scale_items: int = 100_000
    w3_samples: int = 100
    w3_cross_samples: int = 50
    w4_sizes: str = "10,1000,100000"
    w4_seconds: float = 3.0
    w5_items: int = 1000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            repeat=1,
            budget=15.0,
            limit_seconds=0.5,
            w1_jobs=50,
            w2_items=500,
            w2_scale_items=1000,
            w3_samples=8,
            w3_cross_samples=4,
            w4_sizes="10,1000,5000",
            w4_seconds=0.3,
            w5_items=500,
        )

    def override(self, assignments: list[str]) -> Sizes:
        """Apply ``name=value`` overrides (``--size w1_jobs=200``)."""
        changes: dict[str, Any] = {}
        names = [f.name for f in dataclasses.fields(self)]
        for assignment in assignments:
            name, _, raw = assignment.partition("=")
            if name not in names or not raw:
                raise SystemExit(f"--size {assignment!r}: known sizes are {', '.join(names)}")
            changes[name] = type(getattr(self, name))(raw)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Target:
    """A figure the issue asks for: ``op`` is ``>=`` or ``<=``."""

    op: str
    value: float
    text: str

    def met(self, figure: float) -> bool:
        return figure >= self.value if self.op == ">=" else figure <= self.value


@dataclass(frozen=True)
class Metric:
    """One figure a case reports: read from a run's result by ``read``."""

    name: str
    unit: str
    read: Callable[[dict[str, Any]], float]
    target: Target | None = None
    limit: str | None = None  #: key of the LIMIT case this figure is divided by
    peer_target: str | None = None  #: "10x best peer" on this backend, when peers ran
    better: str | None = None  #: "higher" or "lower": compared with the peers' same figure


@dataclass(frozen=True)
class Case:
    """One measured thing: a program run ``repeat`` times with the same arguments."""

    key: str
    workload: str
    backend: str
    label: str
    program: str  #: script path relative to benchmarks/
    args: tuple[str, ...]
    metrics: tuple[Metric, ...]
    peer: str | None = None  #: "dbos" or "langgraph": runs with the peers' interpreter
    progress_unit: str = "transitions/s"
    work: float = 0.0  #: transitions (or samples) a run does, for the time estimate
    guess_rate: float = 1000.0  #: per second, for the time estimate without history
    group: str | None = None  #: cases doing the same work, e.g. "W3/sqlite-same"
    may_shorten: bool = False  #: a slow peer case that may run once to fit the time target
    once: str | None = None  #: why this case runs once in every mode (a scale check)


def rate(result: dict[str, Any]) -> float:
    return float(result["rate"])


def latency(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda result: float(result["latency_ms"][name])
