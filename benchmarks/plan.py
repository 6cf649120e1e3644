"""The suite's plan: the database's limits and stepflow's runs for W1-W5, with targets.

Design decision: the plan is one list of :class:`~cases.Case` objects built from one
:class:`~cases.Sizes` — ``--quick``, a size override or a new backend changes the list,
never the code that runs and reports it. Each workload has its own small builder; the
peers' cases come from ``plan_peers`` and share a ``group`` with the stepflow case doing
the same work, which is how the report finds what to compare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cases import STEPS, Case, Metric, Sizes, Target, latency, rate
from plan_peers import peer_cases

__all__ = ["WORKLOAD_ORDER", "build_plan"]

WORKLOAD_ORDER = ("LIMIT", "W1", "W2", "W3", "W4", "W5")
PROGRAM = "stepflow_workloads.py"
LIMIT_OF = {"sqlite": "LIMIT/sqlite3", "postgres": "LIMIT/psycopg-1"}


def _args(*parts: object) -> tuple[str, ...]:
    return tuple(str(part) for part in parts)


def _limits(s: Sizes) -> list[Case]:
    secs = ("--seconds", str(s.limit_seconds))
    metric = (Metric("commits", "commits/s", rate),)
    rows = [
        ("sqlite3", "sqlite", "plain sqlite3, 1 client", ("sqlite3",)),
        (
            "sqlalchemy",
            "sqlite",
            "SQLAlchemy Core on sqlite3 (stepflow's stack), 1 client",
            ("sqlalchemy",),
        ),
        ("psycopg-1", "postgres", "psycopg, 1 client", ("psycopg", "--clients", "1")),
        ("psycopg-4", "postgres", "psycopg, 4 clients", ("psycopg", "--clients", "4")),
    ]
    return [
        Case(
            key=f"LIMIT/{name}",
            workload="LIMIT",
            backend=backend,
            label=f"update 1 row + insert 1 row per commit: {label}",
            program="raw_limit.py",
            args=(*args, *secs),
            metrics=metric,
            work=s.limit_seconds,
            guess_rate=1.0,
            progress_unit="commits/s",
        )
        for name, backend, label, args in rows
    ]


def _w1(s: Sizes) -> list[Case]:
    ten_x = {
        "sqlite": Target(">=", 5000, ">= 5,000/s (10x best peer)"),
        "postgres-4": Target(">=", 3800, ">= 3,800/s (10x best peer)"),
        "memory": Target(">=", 30_000, ">= 30,000/s"),
    }
    variants = [
        ("memory", "memory", 0, "in-process", None),
        ("sqlite", "sqlite", 0, "in-process", "LIMIT/sqlite3"),
        ("postgres", "postgres", 0, "in-process", "LIMIT/psycopg-1"),
        ("postgres-1", "postgres", 1, "1 worker process", "LIMIT/psycopg-1"),
        ("postgres-4", "postgres", 4, "4 worker processes", "LIMIT/psycopg-4"),
    ]
    cases = []
    for variant, backend, workers, label, limit in variants:
        target = ten_x.get(variant)
        peer_backend = backend if variant in ("sqlite", "postgres-4") else None
        metric = Metric("rate", "transitions/s", rate, target, limit, peer_backend, "higher")
        cases.append(
            Case(
                key=f"W1/{variant}",
                workload="W1",
                backend=backend,
                label=f"{s.w1_jobs:,} jobs x 1 item x 6 steps, {label}",
                program=PROGRAM,
                args=_args("W1", "--backend", backend, "--jobs", s.w1_jobs, "--workers", workers),
                metrics=(metric,),
                work=s.w1_jobs * STEPS,
                guess_rate={"memory": 3000.0, "sqlite": 300.0}.get(backend, 200.0),
                group=f"W1/{backend}",
            )
        )
    return cases


def _peak_rss(result: dict[str, Any]) -> float:
    return float(result["peak_rss_mb"])


def _w2(s: Sizes) -> list[Case]:
    targets = {
        "memory": Target(">=", 30_000, ">= 30,000/s"),
        "sqlite": Target(">=", 10_000, ">= 10,000/s"),
    }
    cases = [
        Case(
            key=f"W2/{backend}",
            workload="W2",
            backend=backend,
            label=f"1 job x {s.w2_items:,} items x 6 steps, in-process",
            program=PROGRAM,
            args=("W2", "--backend", backend, "--jobs", "1", "--items", str(s.w2_items)),
            metrics=(
                Metric("rate", "transitions/s", rate, targets.get(backend), LIMIT_OF.get(backend)),
                Metric("peak RSS", "MiB", _peak_rss),
            ),
            work=s.w2_items * STEPS,
            guess_rate={"memory": 5000.0, "sqlite": 1000.0}.get(backend, 800.0),
        )
        for backend in ("memory", "sqlite", "postgres")
    ]
    big = s.w2_scale_items >= 100_000
    rss_target = Target("<=", 300, "< 300 MiB at 100,000 items") if big else None
    cases.extend(
        Case(
            key=f"W2-scale/{backend}",
            workload="W2",
            backend=backend,
            label=f"1 job x {s.w2_scale_items:,} items x 6 steps, in-process (scale)",
            program=PROGRAM,
            args=("W2", "--backend", backend, "--jobs", "1", "--items", str(s.w2_scale_items)),
            metrics=(
                Metric("time", "s", lambda r: float(r["elapsed_s"])),
                Metric("rate", "transitions/s", rate),
                Metric("peak RSS", "MiB", _peak_rss, rss_target),
            ),
            work=s.w2_scale_items * STEPS,
            guess_rate={"memory": 5000.0}.get(backend, 1000.0),
            once="it shows time and peak memory at scale; W2 gives the rate's median",
        )
        for backend in ("memory", "sqlite")
    )
    return cases


def _w3(s: Sizes) -> list[Case]:
    targets = {
        ("sqlite", False): Target("<=", 1.5, "p50 <= 1.5 ms"),
        ("postgres", False): Target("<=", 2.0, "p50 <= 2 ms"),
        ("sqlite", True): Target("<=", 50.0, "p50 <= 50 ms"),
        ("postgres", True): Target("<=", 5.0, "p50 <= 5 ms"),
    }
    cases = []
    for backend, cross in [
        ("memory", False),
        ("sqlite", False),
        ("sqlite", True),
        ("postgres", False),
        ("postgres", True),
    ]:
        samples = s.w3_cross_samples if cross else s.w3_samples
        where = "from another process (1 worker process)" if cross else "in the same process"
        mode = "cross" if cross else "same"
        p50 = Metric("p50", "ms", latency("p50"), targets.get((backend, cross)), better="lower")
        cases.append(
            Case(
                key=f"W3/{backend}-{mode}",
                workload="W3",
                backend=backend,
                label=f"submit at step 3 -> step 4 starts, {where}, {samples} samples",
                program=PROGRAM,
                args=("W3", "--backend", backend, "--samples", str(samples))
                + (("--cross",) if cross else ()),
                metrics=(p50, Metric("p95", "ms", latency("p95"), better="lower")),
                progress_unit="samples/s",
                work=samples,
                guess_rate=2.0 if cross else 20.0,
                group=f"W3/{backend}-{mode}",
            )
        )
    return cases


def _w4_figure(size: int, *path: str) -> Callable[[dict[str, Any]], float]:
    def read(result: dict[str, Any]) -> float:
        value: Any = result["sizes"][str(size)]
        for name in path:
            value = value[name]
        return float(value)

    return read


def _w4_flat(largest: int, smallest: int) -> Callable[[dict[str, Any]], float]:
    big, small = _w4_figure(largest, "latency_ms", "p50"), _w4_figure(smallest, "latency_ms", "p50")
    return lambda result: big(result) / small(result)


def _w4(s: Sizes) -> list[Case]:
    sizes = [int(n) for n in s.w4_sizes.split(",")]
    largest, smallest = max(sizes), min(sizes)
    metrics: list[Metric] = []
    for n in sizes:
        target = Target("<=", 2.0, "p50 <= 2 ms") if n >= 100_000 else None
        metrics.append(Metric(f"p50 @{n:,}", "ms", _w4_figure(n, "latency_ms", "p50"), target))
        metrics.append(Metric(f"p95 @{n:,}", "ms", _w4_figure(n, "latency_ms", "p95")))
        metrics.append(Metric(f"rate @{n:,}", "snapshots/s", _w4_figure(n, "per_s")))
    metrics.append(Metric(f"create_job @{largest:,}", "s", _w4_figure(largest, "create_job_s")))
    flat = Target("<=", 1.5, "flat: <= 1.5x")
    seconds = s.w4_seconds
    metrics.append(
        Metric(f"p50 @{largest:,} / p50 @{smallest:,}", "x", _w4_flat(largest, smallest), flat)
    )
    return [
        Case(
            key=f"W4/{backend}",
            workload="W4",
            backend=backend,
            label=f"snapshot of a job of {', '.join(f'{n:,}' for n in sizes)} items",
            program=PROGRAM,
            args=_args("W4", "--backend", backend, "--sizes", s.w4_sizes, "--seconds", seconds),
            metrics=tuple(metrics),
            progress_unit="snapshots/s",
            work=sum(sizes) / 5000 + len(sizes) * (s.w4_seconds + 1),
            guess_rate=1.0,
        )
        for backend in ("memory", "sqlite", "postgres")
    ]


def _w5(s: Sizes) -> list[Case]:
    ideal = s.w5_items * 0.05 / 50
    over = Target("<=", 20, "within 20% of ideal")
    return [
        Case(
            key=f"W5/{backend}",
            workload="W5",
            backend=backend,
            label=f"{s.w5_items:,} items, handler awaits 50 ms, 50 at once (ideal {ideal:g} s)",
            program=PROGRAM,
            args=("W5", "--backend", backend, "--items", str(s.w5_items)),
            metrics=(
                Metric("wall time", "s", lambda r: float(r["elapsed_s"])),
                Metric("over ideal", "%", lambda r: 100 * float(r["overhead"]), over),
            ),
            progress_unit="items/s",
            work=s.w5_items,
            guess_rate=500.0,
        )
        for backend in ("memory", "sqlite", "postgres")
    ]


def build_plan(sizes: Sizes) -> list[Case]:
    """Every case: limits first (stepflow's figures are divided by them), then each
    workload's stepflow cases followed by the peers' cases for the same workload."""
    order = {name: index for index, name in enumerate(WORKLOAD_ORDER)}
    cases = [
        *_limits(sizes),
        *_w1(sizes),
        *_w2(sizes),
        *_w3(sizes),
        *_w4(sizes),
        *_w5(sizes),
        *peer_cases(sizes),
    ]
    return sorted(cases, key=lambda case: order[case.workload])  # stable: keeps the rest
