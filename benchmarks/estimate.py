"""How long a run of the plan will take, and how many times each case runs.

Design decision: the estimate comes from this machine's own past, not from constants:
each case's newest stored run (any mode) is scaled by the ratio of the work asked now to
the work done then — its measured part scales, its start-up does not. A case never run
falls back to its guessed rate. The same numbers decide the schedule: when a full run
is expected to overrun its time target, only the peer cases marked ``may_shorten``
(those whose every sample waits for a peer's once-a-second poll) run once instead of
``repeat`` times, slowest first, and the schedule says which — stepflow's cases and the
limits always keep their repetitions.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cases import Case, Sizes

__all__ = ["Schedule", "estimate_one", "history", "schedule"]

STARTUP_S = 0.5  #: a child's interpreter and import time, when there is no history


def history(results: Path) -> dict[str, dict[str, Any]]:
    """The newest stored run of each case, from every results file (names end in UTC time)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("bench-*.json"), key=lambda p: p.name.split("-")[-1]):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found.update({c["key"]: c for c in stored.get("cases", []) if c.get("wall_s")})
    return found


def estimate_one(case: Case, past: dict[str, dict[str, Any]]) -> float:
    """Expected seconds of one run of ``case``."""
    stored = past.get(case.key)
    if not stored or not stored.get("work") or stored.get("problem"):
        return STARTUP_S + case.work / case.guess_rate
    scale = case.work / float(stored["work"])
    wall = float(statistics.median(stored["wall_s"]))
    timed = [float(r["elapsed_s"]) for r in stored.get("results", []) if "elapsed_s" in r]
    if timed:  # the measured part scales with the work; start-up and set-up do not
        measured = float(statistics.median(timed))
        return max(0.0, wall - measured) + measured * scale
    return STARTUP_S + max(0.1, wall - STARTUP_S) * scale


@dataclass
class Schedule:
    """How many times each case runs, what that is expected to take, and why."""

    repeats: dict[str, int]
    per_run: dict[str, float]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def total(self, budget: float) -> float:
        """Expected seconds; a run expected to overrun its budget is run once, at most it."""
        return sum(
            budget if self.per_run[key] >= budget else self.per_run[key] * repeat
            for key, repeat in self.repeats.items()
        )


def schedule(
    cases: list[Case], sizes: Sizes, past: dict[str, dict[str, Any]], target_s: float | None
) -> Schedule:
    """Repetitions per case, shortening only ``may_shorten`` peer cases to meet ``target_s``."""
    per_run = {case.key: estimate_one(case, past) for case in cases}
    plan = Schedule({case.key: sizes.repeat for case in cases}, per_run)
    for case in cases:
        if case.once and sizes.repeat > 1:
            plan.repeats[case.key] = 1
            plan.notes.append(f"{case.key} runs once: {case.once}")
    if target_s and sizes.repeat > 1:
        slow_first = sorted(
            (case for case in cases if case.peer and case.may_shorten),
            key=lambda case: per_run[case.key],
            reverse=True,
        )
        for case in slow_first:
            if plan.total(sizes.budget) <= target_s:
                break
            plan.repeats[case.key] = 1
            plan.notes.append(
                f"{case.key} runs once instead of {sizes.repeat} times (about "
                f"{per_run[case.key]:.0f} s a run: each sample waits for {case.peer}'s "
                "once-a-second poll), to keep the full run near its time target"
            )
    plan.seconds = plan.total(sizes.budget)
    if target_s and plan.seconds > target_s:
        ours = sorted(
            (case for case in cases if not case.peer),
            key=lambda case: min(per_run[case.key], sizes.budget) * plan.repeats[case.key],
            reverse=True,
        )
        longest = ", ".join(
            f"{case.key} ~{min(per_run[case.key], sizes.budget):.0f} s a run" for case in ours[:3]
        )
        plan.notes.append(
            f"expected {plan.seconds / 60:.0f} min, over the {target_s / 60:.0f}-min target: "
            f"stepflow's own cases keep every repetition at this speed; the longest are {longest}"
        )
    return plan
