"""The demo's progress view: a live rich table on a terminal, plain lines elsewhere.

Design decision: the view is driven only by what a real UI has — the snapshot (one
cheap call, counters only) and the event feed (for retries as they happen) — never by
the fakes or the operator's internals, so it shows what a host's screen would show.
Off a terminal (CI logs, pipes) it prints a line only when something changed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from stepflow import Event, ItemStatus, Snapshot, StepView, SubStepStatus

__all__ = ["ProgressView"]

_ITEM_COLUMNS = (
    ("available", "ready"),
    ("processing", "running"),
    ("retrying", "retrying"),
    ("awaiting_input", "waiting"),
    ("passed", "passed"),
    ("skipped", "skipped"),
    ("failed", "failed"),
)
_SUB_MARKS = (
    (SubStepStatus.COMPLETED, "ok"),
    (SubStepStatus.IN_PROGRESS, "run"),
    (SubStepStatus.RETRYING, "retry"),
    (SubStepStatus.SKIPPED, "skip"),
    (SubStepStatus.FAILED, "fail"),
    (SubStepStatus.PENDING, "wait"),
)
_PHASE_NAMES = {1: "Initial setup", 2: "Configuration", 3: "Menu setup", 4: "Finalisation"}


def _counts(step: StepView) -> list[str]:
    return [str(step.counts.get(ItemStatus(status), 0) or "") for status, _ in _ITEM_COLUMNS]


class ProgressView:
    """Renders snapshots and notes (operator actions, retries) for one job."""

    def __init__(self, console: Console, keys: Mapping[str, str] | None = None) -> None:
        self.console = console
        self.keys = dict(keys or {})
        self.notes: deque[str] = deque(maxlen=5)
        self.retries = 0
        self._last_line = ""

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    def note(self, message: str) -> None:
        self.notes.append(message)
        if not self.live:
            self.console.print(message, highlight=False, markup=False)

    def on_event(self, event: Event) -> None:
        """Count and show retries as they are scheduled."""
        data = event.data
        if data.get("to") != "retrying":
            return
        self.retries += 1
        who = self.keys.get(event.item_id or "", event.item_id or "?")
        where = f"{event.step}/{data['substep']}" if "substep" in data else str(event.step)
        reason = data.get("reason") or ""
        attempt = data.get("attempts") or data.get("attempt") or "?"
        self.note(f"retry: {who} {where} after attempt {attempt} ({reason})")

    def progress_line(self, snapshot: Snapshot, elapsed: float) -> None:
        """Off a terminal: one line per visible change."""
        parts = []
        for step in snapshot.steps:
            shown = ",".join(
                f"{label}={step.counts.get(ItemStatus(status), 0)}"
                for status, label in _ITEM_COLUMNS
                if step.counts.get(ItemStatus(status), 0)
            )
            parts.append(f"{step.key} {shown or '-'}")
        line = " | ".join(parts)
        if line != self._last_line:
            self._last_line = line
            self.console.print(
                f"{elapsed:6.1f}s {snapshot.job.status.value}: {line}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )

    def render(self, snapshot: Snapshot, elapsed: float) -> RenderableType:
        steps = Table(title=f"Registration job {snapshot.job.id[:8]} — {snapshot.job.status.value}")
        steps.add_column("#", justify="right")
        steps.add_column("Step")
        steps.add_column("Status")
        for _, label in _ITEM_COLUMNS:
            steps.add_column(label, justify="right")
        for number, step in enumerate(snapshot.steps, start=1):
            style = "yellow" if step.status.value == "action_required" else None
            steps.add_row(
                str(number), step.name, Text(step.status.value, style=style or ""), *_counts(step)
            )
        parts: list[RenderableType] = [steps]
        # The step with the largest sub-step graph gets the phase table (account setup).
        substeps = max(snapshot.steps, key=lambda s: sum(len(p.substeps) for p in s.phases))
        if substeps.phases and substeps.received:
            phases = Table(title=f"{substeps.name}: sub-steps by phase", show_header=True)
            phases.add_column("Phase")
            phases.add_column("Sub-step")
            phases.add_column("Progress")
            for phase in substeps.phases:
                label = f"{phase.phase} {_PHASE_NAMES.get(phase.phase, '')} ({phase.status.value})"
                for view in phase.substeps:
                    shown = " ".join(
                        f"{mark} {view.counts[status]}"
                        for status, mark in _SUB_MARKS
                        if view.counts.get(status)
                    )
                    blocking = " (blocking)" if view.blocking else ""
                    phases.add_row(label, Text(f"{view.name}{blocking}"), shown)
                    label = ""
            parts.append(phases)
        waiting = [
            f"{a.count} at {a.step} ({a.action})"
            for a in snapshot.actions
            if a.action in ("submit", "retry") and a.count
        ]
        parts.append(Text(f"Waiting for a person: {', '.join(waiting) or 'nothing'}"))
        parts.append(Text(f"Retries so far: {self.retries}   elapsed {elapsed:.1f}s"))
        parts.extend(Text(f"  {note}", style="dim") for note in self.notes)
        return Group(*parts)
