"""Running one benchmark program as a child process under a time budget.

Design decision: the conductor never measures anything itself. Each run is a child
process that speaks ``_protocol`` on stdout, in its own process group (its worker
processes too); when its budget is spent the whole group is killed and the run is
reported with how far it got instead of hanging the suite. Whatever database the run
announced with a ``cleanup`` line is removed afterwards, even after a kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from _databases import BENCH_DIR, child_pythonpath, drop_schema
from cases import Case
from report import CaseOutcome, number

__all__ = ["Child", "run_case"]


class Child:
    """One run of a benchmark program, under a time budget."""

    def __init__(self, command: list[str], budget: float, progress_unit: str) -> None:
        self.command = command
        self.budget = budget
        self.progress_unit = progress_unit
        self.cleanups: list[dict[str, Any]] = []

    def run(self) -> tuple[dict[str, Any] | None, float, str | None]:
        env = {**os.environ, "PYTHONPATH": child_pythonpath(), "PYTHONUNBUFFERED": "1"}
        lines: queue.Queue[str | None] = queue.Queue()
        started = time.perf_counter()
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen(
                self.command,
                cwd=BENCH_DIR,
                env=env,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,  # its own process group: worker processes too
            )

            def read() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=read, daemon=True).start()
            result, progress, problem = None, None, None
            deadline = started + self.budget
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    problem = self._timed_out(progress)
                    self._kill(proc)
                    break
                if line is None:
                    break
                message = self._parse(line)
                if message.get("kind") == "progress":
                    progress = message
                elif message.get("kind") == "cleanup":
                    self.cleanups.append(message)
                elif message.get("kind") == "result":
                    result = {k: v for k, v in message.items() if k != "kind"}
                elif message.get("kind") == "error":
                    problem = f"error: {message.get('message')}"
            try:  # output is closed; the run may still be tearing down
                proc.wait(timeout=max(5.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                problem = problem or f"did not exit within its {self.budget:g} s budget"
                self._kill(proc)
            wall = time.perf_counter() - started
            if result is None and problem is None:
                errors.seek(0)
                tail = [ln for ln in errors.read().strip().splitlines() if ln.strip()]
                problem = f"error (exit {proc.returncode}): {tail[-1] if tail else 'no output'}"
        self._clean()
        return result, wall, problem

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        """SIGKILL the run's whole process group (it and any worker processes it began)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _parse(line: str) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {}
        return message if isinstance(message, dict) else {}

    def _timed_out(self, progress: dict[str, Any] | None) -> str:
        if not progress or not progress.get("elapsed"):
            return f"timed out after {self.budget:g} s before any progress"
        rate = progress["done"] / progress["elapsed"]
        memory = f", peak RSS {progress['rss']:,.0f} MiB" if progress.get("rss") else ""
        return (
            f"timed out after {self.budget:g} s at {rate:,.0f} {self.progress_unit} so far{memory}"
        )

    def _clean(self) -> None:
        for item in self.cleanups:
            if "folder" in item:
                shutil.rmtree(item["folder"], ignore_errors=True)
            if "schema" in item:
                try:
                    drop_schema(item["postgres_url"], item["schema"])
                except Exception as exc:  # noqa: BLE001 - report, never stop the suite
                    print(f"  could not drop schema {item['schema']}: {exc}", file=sys.stderr)


def run_case(case: Case, repeat: int, budget: float, python: str, postgres_url: str) -> CaseOutcome:
    """Run ``case`` ``repeat`` times; stop at the first run that has a problem.

    A peer's problem reads "failed: ..." (it is the peer's, not stepflow's).
    """
    outcome = CaseOutcome(case)
    command = [python, str(BENCH_DIR / case.program), *case.args, "--postgres-url", postgres_url]
    for rep in range(repeat):
        child = Child(command, budget, case.progress_unit)
        result, wall, problem = child.run()
        outcome.wall_s.append(wall)
        if result is not None:
            outcome.results.append(result)
            if result.get("incomplete"):  # a figure over failed work is no figure
                problem = f"{result['incomplete']} job(s) did not complete"
        if problem and case.peer:
            problem = f"failed: {problem}"
        shown = problem or _headline(case, result)
        print(f"  {case.key:<28} run {rep + 1}/{repeat} {wall:6.1f} s  {shown}", flush=True)
        if problem:
            outcome.problem = problem
            break
    return outcome


def _headline(case: Case, result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    metric = case.metrics[0]
    return f"{metric.name} {number(metric.read(result), metric.unit)} {metric.unit}"
