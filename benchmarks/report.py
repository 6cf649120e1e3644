"""Turning the runs into the table: medians with min-max, ratios to the limit and to the
best peer, and targets.

Design decision: the table is computed once, as plain rows (dicts), from the stored run
results; the terminal table, the Markdown file and the JSON file are three renderings
of the same rows, so they can never disagree. A target is shown next to its figure with
a met/missed mark and never asserted.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from cases import Case, Metric, Target

__all__ = ["CaseOutcome", "build_rows", "markdown", "number", "terminal_table"]


class CaseOutcome:
    """What the runs of one case gave: results, or why there are none."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.results: list[dict[str, Any]] = []
        self.wall_s: list[float] = []
        self.problem: str | None = None  #: timed out / error / skipped, in words

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.case.key,
            "workload": self.case.workload,
            "backend": self.case.backend,
            "label": self.case.label,
            "program": self.case.program,
            "args": list(self.case.args),
            "peer": self.case.peer,
            "work": self.case.work,
            "results": self.results,
            "wall_s": self.wall_s,
            "problem": self.problem,
        }


def number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit in ("ms", "x"):
        return f"{value:,.2f}"
    if unit in ("s", "%"):
        return f"{value:,.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _limit_rate(outcomes: dict[str, CaseOutcome], key: str | None) -> float | None:
    outcome = outcomes.get(key) if key else None
    if outcome is None or not outcome.results:
        return None
    return statistics.median(float(r["rate"]) for r in outcome.results)


def _best_peer(outcomes: dict[str, CaseOutcome], backend: str) -> tuple[str, float] | None:
    """The highest W1 rate among the peers on ``backend`` (for the 10x target)."""
    best: tuple[str, float] | None = None
    for outcome in outcomes.values():
        case = outcome.case
        if case.peer and case.workload == "W1" and case.backend == backend and outcome.results:
            rate = statistics.median(float(r["rate"]) for r in outcome.results)
            if best is None or rate > best[1]:
                best = (case.peer, rate)
    return best


def _versus_peers(
    outcomes: dict[str, CaseOutcome], case: Case, metric: Metric, median: float
) -> tuple[str, float] | None:
    """How far ahead of the best peer doing the same work this figure is (> 1: ahead).

    For a figure where higher is better that is ours / theirs, where lower is better
    theirs / ours, so the number always reads "N times better than the best peer".
    """
    if case.peer or not case.group or not metric.better or not median:
        return None
    higher = metric.better == "higher"
    best: tuple[str, float] | None = None
    for outcome in outcomes.values():
        other = outcome.case
        if not (other.peer and other.group == case.group and outcome.results):
            continue
        same = [m for m in other.metrics if m.name == metric.name]
        if not same:
            continue
        theirs = statistics.median(same[0].read(r) for r in outcome.results)
        if best is None or (theirs > best[1] if higher else theirs < best[1]):
            best = (other.peer, theirs)
    if best is None:
        return None
    ratio = median / best[1] if higher else best[1] / median
    return best[0], ratio


def build_rows(outcomes: dict[str, CaseOutcome]) -> list[dict[str, Any]]:
    """One row per (case, figure), in plan order."""
    rows: list[dict[str, Any]] = []
    for outcome in outcomes.values():
        case = outcome.case
        base = {"workload": case.workload, "case": case.key, "label": case.label}
        if not outcome.results:
            rows.append({**base, "figure": "-", "problem": outcome.problem or "no result"})
            continue
        for metric in case.metrics:
            values = [metric.read(result) for result in outcome.results]
            median = statistics.median(values)
            row: dict[str, Any] = {
                **base,
                "figure": metric.name,
                "unit": metric.unit,
                "median": median,
                "min": min(values),
                "max": max(values),
                "n": len(values),
                "problem": outcome.problem,
            }
            limit = _limit_rate(outcomes, metric.limit)
            if limit:
                row["ratio_to_limit"] = median / limit
                row["limit"] = metric.limit
            versus = _versus_peers(outcomes, case, metric, median)
            if versus is not None:
                row["best_peer"], row["ratio_to_peer"] = versus
            target: Target | None = metric.target
            if metric.peer_target:
                best = _best_peer(outcomes, metric.peer_target)
                if best is not None:
                    peer, rate = best
                    target = Target(">=", 10 * rate, f">= {10 * rate:,.0f}/s (10x {peer})")
            if target is not None:
                row["target"] = target.text
                row["met"] = target.met(median)
            rows.append(row)
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    if "median" not in row:
        return [row["workload"], row["case"], row["label"], row["problem"], *[""] * 5]
    unit = row["unit"]
    spread = ""
    if row["n"] > 1:
        spread = f"{number(row['min'], unit)}-{number(row['max'], unit)}"
    ratio = f"{row['ratio_to_limit']:.2f}x {row['limit'].split('/')[1]}" if "limit" in row else ""
    peer = f"{row['ratio_to_peer']:.2f}x {row['best_peer']}" if "best_peer" in row else ""
    mark = ""
    if "met" in row:
        mark = "met" if row["met"] else "missed"
    figure = f"{row['figure']}: {number(row['median'], unit)} {unit}"
    if row.get("problem"):
        figure += f" ({row['problem']})"
    return [
        row["workload"],
        row["case"],
        row["label"],
        figure,
        spread,
        ratio,
        peer,
        row.get("target", ""),
        mark,
    ]


HEADERS = ["W", "case", "what", "median", "min-max", "vs limit", "vs best peer", "target", ""]


def _grouped(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Cells of every row; a case's later rows leave its workload, key and label blank."""
    grouped: list[list[str]] = []
    previous = None
    for row in rows:
        cells = _cells(row)
        if row["case"] == previous:
            cells[0] = cells[1] = cells[2] = ""
        previous = row["case"]
        grouped.append(cells)
    return grouped


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for cells in _grouped(rows):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")  # noqa: PERF401
    return "\n".join(lines) + "\n"


def terminal_table(rows: list[dict[str, Any]], title: str) -> Any:
    """A rich Table of the rows (rich is already one of stepflow's dependencies)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for header in HEADERS:
        table.add_column(header, overflow="fold", max_width=44 if header == "what" else None)
    for cells in _grouped(rows):
        if cells[-1] == "missed":
            cells[-1] = "[red]missed[/red]"
        elif cells[-1] == "met":
            cells[-1] = "[green]met[/green]"
        table.add_row(*cells)
    return table
