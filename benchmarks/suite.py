"""stepflow's benchmark suite: ``python benchmarks/suite.py [--quick] [options]``.

Runs the database's own commit limit, stepflow's workloads W1-W5 and, when they are
installed (see docs/performance.md), the same work on DBOS and LangGraph; prints one
table and writes it as JSON and Markdown into ``benchmarks/results/``.

Design decision: the suite is a conductor, not a measurer. It picks the cases
(``plan``), says up front how long they will take (``estimate``), runs each as a child
process under a time budget (``_runner``), and keeps every raw result next to the table
(``report``). What cannot run — PostgreSQL unreachable, a peer not installed — is a row
with its reason, never a crash. Targets are shown with met/missed marks, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _databases import BENCH_DIR
from _runner import run_case
from cases import Case, Sizes
from estimate import Schedule, history, schedule
from machine import describe_machine, package_versions, peer_versions, postgres_facts
from plan import WORKLOAD_ORDER, build_plan
from plan_peers import PEERS
from report import CaseOutcome, build_rows, markdown, terminal_table

__all__ = ["main"]

RESULTS = BENCH_DIR / "results"
PEERS_VENV = BENCH_DIR / ".peers-venv"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("memory", "sqlite", "postgres")
TIME_TARGET_MIN = 25.0  #: what a full run with the peers should take on a 2-core machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="stepflow's benchmark suite (full mode by default: the issue's sizes, "
        "3 repetitions; --quick for small sizes and 1 repetition)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    parser.add_argument("--workloads", default=",".join(WORKLOAD_ORDER), help="e.g. W1,W3")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="e.g. sqlite,postgres")
    parser.add_argument("--cases", default="*", help="glob(s) on case keys, e.g. 'W1/*,W3/*'")
    parser.add_argument("--no-peers", action="store_true", help="skip DBOS and LangGraph")
    parser.add_argument("--repeat", type=int, help="repetitions of every run")
    parser.add_argument("--budget", type=float, help="seconds one run may take")
    parser.add_argument(
        "--time-target",
        type=float,
        default=TIME_TARGET_MIN,
        metavar="MIN",
        help="minutes a full run should take: if it is expected to take longer, the slowest "
        "poll-bound peer cases run once (said up front); 0 keeps every repetition",
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one size, e.g. --size w1_jobs=200 (see plan.Sizes)",
    )
    parser.add_argument(
        "--postgres-url", default=os.environ.get("STEPFLOW_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--peers-python", help="interpreter with dbos and langgraph installed")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--setup-peers",
        action="store_true",
        help="create benchmarks/.peers-venv with DBOS and LangGraph, then exit",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    sizes = sizes.override(args.size)
    if args.repeat is not None:
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    if args.budget is not None:
        sizes = dataclasses.replace(sizes, budget=args.budget)
    return sizes


def _peer_python(args: argparse.Namespace) -> str | None:
    if args.peers_python:
        return str(args.peers_python)
    candidate = PEERS_VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def _peer_problem(python: str | None, module: str) -> str | None:
    """Why ``module`` cannot run under the peers' interpreter, or ``None`` if it can."""
    if python is None:
        return "not installed: no benchmarks/.peers-venv (see docs/performance.md)"
    try:
        found = subprocess.run(
            [python, "-c", f"import {module}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not installed: {exc}"
    if found.returncode == 0:
        return None
    lines = [line for line in found.stderr.strip().splitlines() if line.strip()]
    return f"not installed: {lines[-1] if lines else f'import {module} failed'}"


def select(plan: list[Case], args: argparse.Namespace) -> list[Case]:
    """The cases the command line asks for, plus the limits their figures divide by."""
    workloads = {w.strip().upper() for w in args.workloads.split(",") if w.strip()}
    backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
    chosen = [
        case
        for case in plan
        if case.workload in workloads
        and case.backend in backends
        and any(fnmatch.fnmatch(case.key, p) for p in patterns)
        and not (case.peer and args.no_peers)
    ]
    needed = {m.limit for case in chosen for m in case.metrics if m.limit}
    keys = {case.key for case in chosen}
    return [case for case in plan if case.key in keys or case.key in needed]


def setup_peers(target: Path = PEERS_VENV) -> None:
    """Create the peers' virtual environment and install benchmarks/peers/requirements.txt."""
    import venv

    print(f"creating {target} with the peers (dbos, langgraph and its checkpointers)")
    python = target / "bin" / "python"
    if not python.exists():  # an existing environment is only brought up to date
        venv.create(target, with_pip=True)
    requirements = BENCH_DIR / "peers" / "requirements.txt"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-U", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    print(f"peers ready: {python}")


def _skipped(case: Case, reason: str) -> CaseOutcome:
    outcome = CaseOutcome(case)
    outcome.problem = reason
    return outcome


def _announce(mode: str, cases: list[Case], sizes: Sizes, plan: Schedule) -> None:
    """Say up front what will run and how long it is expected to take."""
    peers = sum(
        min(plan.per_run[c.key], sizes.budget) * plan.repeats[c.key] for c in cases if c.peer
    )
    ceiling = sum(sizes.budget * plan.repeats[c.key] for c in cases)
    print(
        f"stepflow benchmark suite, {mode} mode: {len(cases)} cases x {sizes.repeat} "
        f"repetition(s), budget {sizes.budget:g} s per run"
    )
    print(
        f"expected run time: about {plan.seconds / 60:.1f} min, of which the peers "
        f"{peers / 60:.1f} min (at most {ceiling / 60:.0f} min if every run used its whole "
        "budget; scaled from this machine's last stored runs)",
        flush=True,
    )
    for note in plan.notes:
        print(f"  note: {note}", flush=True)


def _blocked(case: Case, pg_ok: bool, peer_problems: dict[str, str | None]) -> str | None:
    if case.backend == "postgres" and not pg_ok:
        return "skipped: PostgreSQL unreachable"
    if case.peer and peer_problems.get(case.peer):
        return peer_problems[case.peer]
    return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.setup_peers:
        setup_peers()
        return
    sizes = _sizes(args)
    mode = "quick" if args.quick else "full"
    cases = select(build_plan(sizes), args)
    peers_python = _peer_python(args)
    wanted = {case.peer for case in cases if case.peer}
    peer_problems = {peer: _peer_problem(peers_python, peer) for peer in PEERS if peer in wanted}
    pg = postgres_facts(args.postgres_url)
    pg_ok = pg is not None and "unreachable" not in pg
    runnable = [case for case in cases if _blocked(case, pg_ok, peer_problems) is None]
    target = args.time_target * 60 if mode == "full" else None
    plan = schedule(runnable, sizes, history(args.out), target)
    _announce(mode, runnable, sizes, plan)
    if args.list:
        for case in cases:
            reason = _blocked(case, pg_ok, peer_problems)
            one = f"~{min(plan.per_run[case.key], sizes.budget):5.0f} s/run" if not reason else ""
            print(f"  {case.key:<28} {one:>12}  {reason or case.label}")
        return
    started = dt.datetime.now(dt.UTC)
    outcomes: dict[str, CaseOutcome] = {}
    for case in cases:
        reason = _blocked(case, pg_ok, peer_problems)
        if reason:
            outcomes[case.key] = _skipped(case, reason)
            print(f"  {case.key:<28} {reason}", flush=True)
            continue
        python = peers_python if case.peer else sys.executable
        repeat = plan.repeats[case.key]
        outcomes[case.key] = run_case(case, repeat, sizes.budget, str(python), args.postgres_url)
    finished = dt.datetime.now(dt.UTC)
    rows = build_rows(outcomes)
    record = {
        "mode": mode,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/suite.py", *(argv if argv is not None else sys.argv[1:])]),
        "sizes": dataclasses.asdict(sizes),
        "expected_s": plan.seconds,
        "schedule_notes": plan.notes,
        "machine": describe_machine(BENCH_DIR.parent),
        "postgres": pg,
        "versions": package_versions(),
        "peer_versions": peer_versions(str(peers_python)) if peers_python and wanted else None,
        "peer_problems": peer_problems,
        "cases": [outcome.to_json() for outcome in outcomes.values()],
        "rows": rows,
    }
    write(record, rows, args.out, mode, started)
    broken = [
        o.case.key
        for o in outcomes.values()
        if not o.case.peer and (o.problem or "").startswith("error")
    ]
    if broken:  # stepflow crashing is a bug to see; a slow run, a missed target or a peer is not
        print(f"runs that failed with an error: {', '.join(broken)}", file=sys.stderr)
        raise SystemExit(2)


def _header(record: dict[str, Any]) -> str:
    machine, pg = record["machine"], record["postgres"] or {}
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v)
    peers = record["peer_versions"] or {}
    peer_text = ", ".join(f"{k} {v}" for k, v in peers.items() if v) or "not installed"
    if not record["peer_problems"] and not peers:
        peer_text = "not in this run"
    problems = [f"{k} {v}" for k, v in (record["peer_problems"] or {}).items() if v]
    if problems:
        peer_text += f" ({'; '.join(problems)})"
    notes = "".join(f"- {note}\n" for note in record["schedule_notes"])
    return (
        f"stepflow benchmark suite, {record['mode']} mode, {record['started_at']} to "
        f"{record['finished_at']} (UTC)\n\n"
        f"- machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['cores_usable']} usable), {machine['memory_gib']} GiB, {machine['os']}\n"
        f"- Python {machine['python']}, SQLite {machine['sqlite']}, PostgreSQL "
        f"{pg.get('server_version', 'n/a')} (fsync {pg.get('fsync', 'n/a')}, "
        f"synchronous_commit {pg.get('synchronous_commit', 'n/a')})\n"
        f"- versions: {versions}; revision {machine['revision']}\n"
        f"- peers: {peer_text}\n"
        f"- repetitions {record['sizes']['repeat']} (median, min-max), budget "
        f"{record['sizes']['budget']:g} s per run; command: `{record['command']}`\n"
        f"{notes}"
    )


def write(
    record: dict[str, Any], rows: list[dict[str, Any]], out: Path, mode: str, at: dt.datetime
) -> None:
    from rich.console import Console

    header = _header(record)
    Console(width=200).print(terminal_table(rows, f"stepflow benchmarks ({mode})"))
    print(header)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{mode}-{at.strftime('%Y%m%dT%H%M%SZ')}"
    text = json.dumps(record, indent=2, default=str)
    page = f"# {header}\n{markdown(rows)}"
    for name in (stem, f"latest-{mode}"):
        (out / f"{name}.json").write_text(text)
        (out / f"{name}.md").write_text(page)
    print(f"wrote {out / stem}.json and .md (and latest-{mode}.*)")


if __name__ == "__main__":
    main()
