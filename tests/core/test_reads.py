"""Reading: snapshots, item pages, events, the watch iterator and the sync facade."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from stepflow import InvalidInput, ItemStatus, JobStatus, SyncOrchestrator
from stepflow._snapshot import POLL_WHILE_RUNNING, POLL_WHILE_WAITING

from .kit import auto, handlers, ids_at, items, ok, pipeline, running

pytestmark = pytest.mark.anyio
PICK = pipeline(auto("a", "ok"), {"key": "pick", "type": "action_required", "action": "choice"})


async def test_snapshot_suggests_polls_and_lists_available_actions() -> None:
    """poll_after is short while work runs, longer while waiting, None when final."""
    gate = anyio.Event()

    async def held(ctx: Any) -> None:
        await gate.wait()

    p = pipeline(auto("a", "held"), {"key": "pick", "type": "action_required", "action": "choice"})
    async with running(p, registry=handlers(held=held)) as orch:
        job = await orch.create_job("p", items(2))
        running_snap = await orch.snapshot(job.id)
        gate.set()
        waiting = await orch.wait(job.id, timeout=5)
        await orch.submit(
            job.id, "pick", {i: {"value": 1} for i in await ids_at(orch, job.id, "pick")}
        )
        final = await orch.wait(job.id, timeout=5)
    assert running_snap.poll_after == POLL_WHILE_RUNNING
    assert waiting.poll_after == POLL_WHILE_WAITING
    assert [(a.action, a.step, a.count) for a in waiting.actions] == [
        ("pause", None, 0),
        ("cancel", None, 0),
        ("submit", "pick", 2),
        ("skip", "pick", 2),
        ("discard", "pick", 2),
    ]
    assert final.poll_after is None
    assert running_snap.version < waiting.version < final.version
    assert final.job.status is JobStatus.COMPLETED


async def test_items_page_in_order_with_a_status_filter() -> None:
    """list_items pages through a step in item order and filters by status."""

    async def odd_fails(ctx: Any) -> None:
        if ctx.data["n"] % 2:
            raise ValueError("odd")

    p = pipeline(auto("a", "odd_fails"))
    async with running(p, registry=handlers(odd_fails=odd_fails)) as orch:
        job = await orch.create_job("p", items(25))
        await orch.wait(job.id, timeout=5)
        keys: list[str] = []
        cursor = None
        while True:
            page = await orch.list_items(job.id, "a", cursor=cursor, limit=10)
            keys.extend(i.key for i in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        failed = await orch.list_items(job.id, "a", status="failed", limit=100)
        both = await orch.list_items(job.id, "a", status=["failed", "passed"], limit=100)
        with pytest.raises(InvalidInput, match="status"):
            await orch.list_items(job.id, "a", status="bogus")
        with pytest.raises(InvalidInput, match="limit"):
            await orch.list_items(job.id, "a", limit=0)
    assert keys == [f"i{n}" for n in range(25)]
    assert [i.key for i in failed.items] == [f"i{n}" for n in range(1, 25, 2)]
    assert {i.status for i in failed.items} == {ItemStatus.FAILED}
    assert len(both.items) == 25


async def test_events_are_gapless_ordered_and_end_at_the_version() -> None:
    """Event seqs run 1..version without gaps; every change is there."""
    async with running(PICK, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(3))
        snap = await orch.wait(job.id, timeout=5)
        events = await orch.events(job.id)
        tail = await orch.events(job.id, after=5, limit=3)
    assert [e.seq for e in events] == list(range(1, snap.version + 1))
    assert events[0].type == "job.created"
    assert [e.seq for e in tail] == [6, 7, 8]
    moves = [e for e in events if e.type == "item.status" and e.step == "a"]
    assert {(e.data["from"], e.data["to"]) for e in moves} == {
        (None, "available"),
        ("available", "processing"),
        ("processing", "processed"),
        ("processed", "passed"),
    }


async def test_watch_yields_changes_as_they_happen_until_final() -> None:
    """watch() streams events live and ends once the job is final."""
    async with running(PICK, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(1))
        seen: list[str] = []
        final: list[Any] = []

        async def follow() -> None:
            async for event in orch.watch(job.id):
                seen.append(event.type)
                if event.type == "job.status":
                    final.append(event.data["to"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await orch.wait(job.id, timeout=5)
            [item] = await ids_at(orch, job.id, "pick")
            await orch.submit(job.id, "pick", {item: {"value": 1}})
    assert seen[0] == "job.created"
    assert final[-1] == "completed"
    assert "action" in seen


def test_sync_facade_runs_the_same_verbs_without_await() -> None:
    """SyncOrchestrator drives a job end to end from plain (non-async) code."""
    with SyncOrchestrator(handlers=handlers(ok=ok), pipelines=[PICK]) as orch:
        job = orch.create_job("p", items(2))
        snap = orch.wait(job.id, timeout=5)
        assert snap.steps[1].counts == {ItemStatus.AWAITING_INPUT: 2}
        page = orch.list_items(job.id, "pick")
        orch.submit(job.id, "pick", {i.id: {"value": 3} for i in page.items})
        final = orch.wait(job.id, timeout=5)
        types = [e.type for e in orch.watch(job.id)]
    assert final.job.status is JobStatus.COMPLETED
    assert types[0] == "job.created" and len(types) == final.version


async def test_wait_woken_by_its_own_writes_reads_only_what_settles_the_job() -> None:
    """A waiter woken by this process's writes reads nothing while they leave the job
    busy, and reads the job whole once, when one of them settles it."""
    gate, waiting = anyio.Event(), anyio.Event()

    async def held(ctx: Any) -> None:
        await gate.wait()

    p = pipeline(auto("a", "held"), auto("b", "ok"), auto("c", "ok"), auto("d", "ok"))
    async with running(p, registry=handlers(held=held, ok=ok)) as orch:
        job = await orch.create_job("p", items(2))
        reads: list[str] = []
        read_statuses, read_progress = orch.storage.step_statuses, orch.storage.progress
        wait_job = orch.broker.wait_job

        async def counted_statuses(job_id: str) -> Any:
            reads.append("statuses")
            return await read_statuses(job_id)

        async def counted_progress(job_id: str) -> Any:
            reads.append("progress")
            return await read_progress(job_id)

        async def noted_wait(job_id: str, after: int, timeout: float | None) -> bool:
            waiting.set()
            return await wait_job(job_id, after, timeout)

        orch.storage.step_statuses = counted_statuses  # type: ignore[method-assign]
        orch.storage.progress = counted_progress  # type: ignore[method-assign]
        orch.broker.wait_job = noted_wait  # type: ignore[method-assign]
        snaps: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                snaps.append(await orch.wait(job.id, timeout=5))

            tg.start_soon(waiter)
            await waiting.wait()
            gate.set()
    assert snaps[0].job.status is JobStatus.COMPLETED
    assert reads == ["progress", "progress"]  # the first look, then the settled job
