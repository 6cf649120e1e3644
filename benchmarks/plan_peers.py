"""The peers' cases: DBOS and LangGraph doing W1 and W3 on the same databases.

Design decision: a peer case is the same data as a stepflow case, run by a program under
``peers/`` with the peers' own interpreter, and carries the ``group`` of the stepflow
case doing the same work (``W1/sqlite``, ``W3/postgres-cross``, ...), so the report can
put each stepflow figure next to the best peer's. Cases whose every sample waits for a
peer's once-a-second poll are marked ``may_shorten``: they are the only ones the suite
runs fewer times to fit a full run into its time target, and it says so when it does.
"""

from __future__ import annotations

from cases import STEPS, Case, Metric, Sizes, latency, rate

__all__ = ["PEERS", "peer_cases"]

PEERS = {"dbos": "peers/dbos_bench.py", "langgraph": "peers/langgraph_bench.py"}
LIMIT_OF = {"sqlite": "LIMIT/sqlite3", "postgres": "LIMIT/psycopg-1"}
W1_GUESS = {("dbos", "sqlite"): 180.0, ("dbos", "postgres"): 150.0}


def _w1(peer: str, backend: str, s: Sizes) -> Case:
    return Case(
        key=f"W1/{peer}-{backend}",
        workload="W1",
        backend=backend,
        label=f"{peer}: {s.w1_jobs:,} workflows x 6 steps",
        program=PEERS[peer],
        args=("W1", "--backend", backend, "--jobs", str(s.w1_jobs)),
        metrics=(Metric("rate", "transitions/s", rate, None, LIMIT_OF[backend]),),
        peer=peer,
        work=s.w1_jobs * STEPS,
        guess_rate=W1_GUESS.get((peer, backend), 400.0),
        group=f"W1/{backend}",
    )


def _w3(peer: str, backend: str, cross: bool, s: Sizes) -> Case:
    samples = s.w3_cross_samples if cross else s.w3_samples
    where = "from another process" if cross else "in the same process"
    resume = "send -> recv" if peer == "dbos" else "Command(resume) -> interrupt"
    mode = "cross" if cross else "same"
    polled = peer == "dbos" and backend == "sqlite"  # DBOS polls SQLite once a second
    return Case(
        key=f"W3/{peer}-{backend}-{mode}",
        workload="W3",
        backend=backend,
        label=f"{peer}: {resume} at step 3 -> step 4 starts, {where}, {samples} samples",
        program=PEERS[peer],
        args=("W3", "--backend", backend, "--samples", str(samples))
        + (("--cross",) if cross else ()),
        metrics=(Metric("p50", "ms", latency("p50")), Metric("p95", "ms", latency("p95"))),
        peer=peer,
        progress_unit="samples/s",
        work=samples,
        guess_rate=1.0 if polled else 20.0,
        group=f"W3/{backend}-{mode}",
        may_shorten=polled,
    )


def peer_cases(s: Sizes) -> list[Case]:
    """W1 for both peers on both databases; W3 in-process for both, and from another
    process for DBOS (LangGraph resumes inside its caller and has no worker process)."""
    cases: list[Case] = []
    for peer in PEERS:
        for backend in ("sqlite", "postgres"):
            cases.append(_w1(peer, backend, s))
            cases.append(_w3(peer, backend, False, s))
            if peer == "dbos":
                cases.append(_w3(peer, backend, True, s))
    return cases
