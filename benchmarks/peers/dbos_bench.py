"""DBOS Transact doing W1 and W3 on the same database: ``python dbos_bench.py W1|W3 ...``.

Design decision: the peer gets its natural shape, not stepflow's: a workflow of six
steps per job (each step's completion is a checkpoint, DBOS's durable state change), and
for a person in the loop a workflow that waits in ``recv`` at step 3 for a ``send``.
DBOS runs with its shipped defaults on SQLite (its own pragmas) and PostgreSQL (a fresh
system schema; LISTEN/NOTIFY). The measuring side never polls DBOS: in one process it
awaits the workflow's own task, across processes the serving process reports each
workflow's step-4 start time on its stdout. On SQLite DBOS finds messages by polling
once a second, so back-to-back messages would all meet the poll at its worst phase; each
message there is sent after a random pause of up to one poll interval, the way a
person's action arrives at no particular moment. Runs in the peers' virtual
environment and prints protocol lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSClient, DBOSConfig, SetWorkflowID

from _protocol import ProgressReporter, emit, monotonic_ns, percentiles_ms

__all__ = ["main"]

STEPS = 6
TOPIC = "approve"
SQLITE_POLL_S = 1.0  #: DBOS's default notification_listener_polling_interval_sec


@DBOS.step()
async def noop_step(n: int) -> None:
    return None


@DBOS.step()
async def stamp_step() -> int:
    return monotonic_ns()


@DBOS.workflow()
async def six_steps() -> None:
    for n in range(STEPS):
        await noop_step(n)


@DBOS.workflow()
async def approval_flow() -> int:
    await noop_step(0)
    await noop_step(1)
    await DBOS.set_event_async("parked", True)
    await DBOS.recv_async(TOPIC, timeout_seconds=3600)  # step 3: the person's approval
    started = await stamp_step()  # step 4 starts
    await noop_step(4)
    await noop_step(5)
    return started


def _config(url: str, schema: str | None) -> DBOSConfig:
    config: DBOSConfig = {
        "name": "stepflow-bench",
        "system_database_url": url,
        "run_admin_server": False,
        "log_level": "WARNING",
    }
    if schema:
        config["dbos_system_schema"] = schema
    return config


def _database(backend: str, postgres_url: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="dbos-bench-"))
        emit("cleanup", folder=str(folder))
        return f"sqlite:///{folder / 'dbos.sqlite'}", None
    schema = f"bench_dbos_{uuid.uuid4().hex[:10]}"
    emit("cleanup", postgres_url=postgres_url, schema=schema)
    return postgres_url, schema


class Arrival:
    """When the next message goes out: at once, or (polled SQLite) at a random phase."""

    def __init__(self, url: str) -> None:
        self.spread = SQLITE_POLL_S if url.startswith("sqlite") else 0.0
        self.random = random.Random(5)

    def pause(self) -> float:
        return self.random.uniform(0.0, self.spread) if self.spread else 0.0


async def w1(jobs: int) -> dict[str, Any]:
    finished = [0]
    reporter = ProgressReporter(lambda: finished[0] * STEPS)
    started = time.perf_counter()
    handles = [await DBOS.start_workflow_async(six_steps) for _ in range(jobs)]
    for handle in handles:
        await handle.get_result()  # the workflow's own task: no polling
        finished[0] += 1
        reporter.tick()
    elapsed = time.perf_counter() - started
    return {"transitions": jobs * STEPS, "elapsed_s": elapsed, "rate": jobs * STEPS / elapsed}


async def start_parked(samples: int, prefix: str) -> list[Any]:
    """Start ``samples`` approval workflows and return once each waits in ``recv``."""
    handles = []
    for n in range(samples):
        with SetWorkflowID(f"{prefix}-{n}"):
            handles.append(await DBOS.start_workflow_async(approval_flow))
    for handle in handles:
        await DBOS.get_event_async(handle.get_workflow_id(), "parked", timeout_seconds=600)
    return handles


async def w3_same(url: str, samples: int) -> dict[str, Any]:
    handles = await start_parked(samples, f"h{uuid.uuid4().hex[:8]}")
    latencies: list[int] = []
    reporter = ProgressReporter(lambda: len(latencies))
    arrival = Arrival(url)
    started = time.perf_counter()
    for handle in handles:
        await asyncio.sleep(arrival.pause())
        submitted = monotonic_ns()
        await DBOS.send_async(handle.get_workflow_id(), "ok", topic=TOPIC)
        latencies.append(int(await handle.get_result()) - submitted)
        reporter.tick()
    return _latencies(latencies, time.perf_counter() - started, arrival)


def _latencies(latencies: list[int], elapsed: float, arrival: Arrival) -> dict[str, Any]:
    return {
        "latency_ms": percentiles_ms(latencies),
        "samples": len(latencies),
        "elapsed_s": elapsed,
        "arrival_spread_s": arrival.spread,
    }


def w3_cross(url: str, schema: str | None, samples: int) -> dict[str, Any]:
    """Workflows run in a serving process; this one only sends, like a web process."""
    prefix = f"x{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, __file__, "serve", "--url", url, "--prefix", prefix]
    command += ["--samples", str(samples), *(["--schema", schema] if schema else [])]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if "serving" not in server.stdout.readline():
            raise RuntimeError("the DBOS serving process did not start")
        client = DBOSClient(system_database_url=url, dbos_system_schema=schema or "dbos")
        latencies: list[int] = []
        reporter = ProgressReporter(lambda: len(latencies))
        arrival = Arrival(url)
        started = time.perf_counter()
        for n in range(samples):
            time.sleep(arrival.pause())
            submitted = monotonic_ns()
            client.send(f"{prefix}-{n}", "ok", topic=TOPIC)
            stamp = json.loads(server.stdout.readline())  # the serving process's report
            latencies.append(int(stamp["started_ns"]) - submitted)
            reporter.tick()
        elapsed = time.perf_counter() - started
        client.destroy()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return _latencies(latencies, elapsed, arrival)


async def serve(samples: int, prefix: str) -> None:
    """Park the workflows, then report each one's step-4 start as it completes."""
    handles = await start_parked(samples, prefix)
    print("serving", flush=True)
    for handle in handles:  # the measuring process sends in this order
        started = await handle.get_result()
        print(json.dumps({"id": handle.get_workflow_id(), "started_ns": started}), flush=True)
    await asyncio.Event().wait()  # until the measuring process terminates us


def _drop(url: str, schema: str | None) -> None:
    if schema:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["W1", "W3", "serve"])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--cross", action="store_true", help="W3: send from another process")
    parser.add_argument("--url", help="serve: the system database")
    parser.add_argument("--schema", help="serve: the system schema")
    parser.add_argument("--prefix", help="serve: workflow id prefix")
    args = parser.parse_args()
    if args.workload == "serve":
        DBOS(config=_config(args.url, args.schema))
        DBOS.launch()
        asyncio.run(serve(args.samples, args.prefix))
        return
    url, schema = _database(args.backend, args.postgres_url)
    try:
        DBOS(config=_config(url, schema))
        DBOS.launch()  # creates the system tables (the cross-process client needs them)
        if args.workload == "W3" and args.cross:
            DBOS.destroy()
            figures = w3_cross(url, schema, args.samples)
        else:
            run = w1(args.jobs) if args.workload == "W1" else w3_same(url, args.samples)
            figures = asyncio.run(run)
            DBOS.destroy()
    finally:
        _drop(args.postgres_url, schema)
        if url.startswith("sqlite:///"):
            shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent, ignore_errors=True)
    emit("result", **figures)


if __name__ == "__main__":
    main()
