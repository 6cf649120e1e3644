"""LangGraph doing W1 and W3 with its SQLite and PostgreSQL checkpointers.

``python langgraph_bench.py W1|W3 --backend sqlite|postgres ...``

Design decision: the peer gets its natural shape: a graph of six nodes per job, one
thread per job, compiled with the shipped async checkpointer and run with
``durability="sync"`` (each node's checkpoint is written before the next node starts —
LangGraph's durable mode; its default writes checkpoints in the background). A person in
the loop is ``interrupt()`` at node 3 and ``Command(resume=...)``. SQLite runs in WAL
mode (the checkpointer's own setting) with synchronous=FULL, as stepflow does. Jobs run
64 at a time, as stepflow's workers do. Runs in the peers' virtual environment.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from _protocol import ProgressReporter, emit, monotonic_ns, percentiles_ms

__all__ = ["main"]

STEPS = 6
CONCURRENCY = 64


class State(TypedDict, total=False):
    n: int
    started_ns: int


def _noop(state: State) -> State:
    return {"n": state.get("n", 0) + 1}


def _approve(state: State) -> State:
    interrupt("approve")  # step 3: waits for the person's Command(resume=...)
    return {"n": state.get("n", 0) + 1}


def _stamp(state: State) -> State:
    return {"n": state.get("n", 0) + 1, "started_ns": monotonic_ns()}  # step 4 starts


def build(human: bool) -> StateGraph[State]:
    graph: StateGraph[State] = StateGraph(State)
    names = [f"s{n}" for n in range(STEPS)]
    for name in names:
        node = _noop
        if human and name == "s2":
            node = _approve
        elif human and name == "s3":
            node = _stamp
        graph.add_node(name, node)
    graph.add_edge(START, names[0])
    for first, second in itertools.pairwise(names):
        graph.add_edge(first, second)
    graph.add_edge(names[-1], END)
    return graph


@asynccontextmanager
async def checkpointer(backend: str, postgres_url: str) -> AsyncIterator[Any]:
    if backend == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        folder = Path(tempfile.mkdtemp(prefix="langgraph-bench-"))
        emit("cleanup", folder=str(folder))
        try:
            async with aiosqlite.connect(str(folder / "lg.db")) as conn:
                saver = AsyncSqliteSaver(conn)
                await saver.setup()  # WAL mode
                await conn.execute("PRAGMA synchronous=FULL")
                yield saver
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    schema = f"bench_lg_{uuid.uuid4().hex[:10]}"
    emit("cleanup", postgres_url=postgres_url, schema=schema)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        conn = await psycopg.AsyncConnection.connect(
            postgres_url, autocommit=True, prepare_threshold=0, options=f"-c search_path={schema}"
        )
        async with conn:
            saver = AsyncPostgresSaver(conn)  # type: ignore[arg-type]
            await saver.setup()
            yield saver
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


async def w1(saver: Any, jobs: int) -> dict[str, Any]:
    graph = build(human=False).compile(checkpointer=saver)
    done = [0]
    reporter = ProgressReporter(lambda: done[0] * STEPS)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with gate:
            await graph.ainvoke({"n": 0}, _thread(f"j{n}"), durability="sync")
        done[0] += 1
        reporter.tick()

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(jobs)))
    elapsed = time.perf_counter() - started
    return {"transitions": jobs * STEPS, "elapsed_s": elapsed, "rate": jobs * STEPS / elapsed}


async def w3(saver: Any, samples: int) -> dict[str, Any]:
    graph = build(human=True).compile(checkpointer=saver)
    latencies: list[int] = []
    reporter = ProgressReporter(lambda: len(latencies))
    for n in range(samples):  # every job waits at node 3
        await graph.ainvoke({"n": 0}, _thread(f"h{n}"), durability="sync")
    for n in range(samples):
        submitted = monotonic_ns()
        state = await graph.ainvoke(Command(resume=True), _thread(f"h{n}"), durability="sync")
        latencies.append(int(state["started_ns"]) - submitted)
        reporter.tick()
    return {"latency_ms": percentiles_ms(latencies), "samples": len(latencies)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with checkpointer(args.backend, args.postgres_url) as saver:
        if args.workload == "W1":
            return await w1(saver, args.jobs)
        return await w3(saver, args.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["W1", "W3"])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--cross", action="store_true", help="not supported: no worker process")
    args = parser.parse_args()
    if args.cross:
        emit("error", message="LangGraph has no separate worker process to act from")
        return
    emit("result", **asyncio.run(run(args)))


if __name__ == "__main__":
    main()
