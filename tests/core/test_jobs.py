"""Creating, starting, pausing, resuming and cancelling jobs."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stepflow import (
    Conflict,
    InvalidInput,
    ItemStatus,
    JobStatus,
    LimitExceeded,
    NotFound,
    Pipeline,
    StepStatus,
)

from .kit import auto, handlers, items, ok, pipeline, running

pytestmark = pytest.mark.anyio
THREE = pipeline(auto("a", "ok"), auto("b", "ok"), auto("c", "ok"))


async def test_items_flow_through_every_automatic_step() -> None:
    """A job of automatic steps completes with every item passed at every step."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(7))
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    for step in snap.steps:
        assert step.counts == {ItemStatus.PASSED: 7}
        assert step.status is StepStatus.COMPLETED
    assert snap.totals["finished"] == 7
    assert snap.poll_after is None


async def test_outputs_of_earlier_steps_reach_later_handlers() -> None:
    """A handler sees the outputs of the item's earlier steps by step key."""
    seen: list[Any] = []

    async def first(ctx: Any) -> dict[str, int]:
        return {"double": ctx.data["n"] * 2}

    async def second(ctx: Any) -> None:
        seen.append(ctx.outputs["a"]["double"])

    p = pipeline(auto("a", "first"), auto("b", "second"))
    async with running(p, registry=handlers(first=first, second=second)) as orch:
        job = await orch.create_job("p", items(3))
        await orch.wait(job.id, timeout=5)
    assert sorted(seen) == [0, 2, 4]


async def test_idempotency_key_returns_the_same_job() -> None:
    """Creating twice with one idempotency key gives one job and writes nothing the second time."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        first = await orch.create_job("p", items(2), idempotency_key="batch-1")
        second = await orch.create_job("p", items(5), idempotency_key="batch-1")
        snap = await orch.wait(first.id, timeout=5)
    assert second.id == first.id
    assert snap.totals["items"] == 2


async def test_draft_job_waits_until_started() -> None:
    """start=False makes a draft that claims nothing until start_job."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(2), start=False)
        snap = await orch.snapshot(job.id)
        assert snap.job.status is JobStatus.DRAFT
        assert [a.action for a in snap.actions] == ["start", "cancel", "skip", "discard"]
        await orch.start_job(job.id)
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED


async def test_pause_stops_claims_and_resume_continues() -> None:
    """A paused job claims no new work; resuming finishes it."""
    gate = anyio.Event()
    first_started = anyio.Event()
    calls: list[str] = []

    async def slow(ctx: Any) -> None:
        calls.append(ctx.item_key)
        first_started.set()
        await gate.wait()

    p = pipeline(auto("a", "slow", concurrency=1), auto("b", "ok"))
    async with running(p, registry=handlers(slow=slow, ok=ok)) as orch:
        job = await orch.create_job("p", items(3))
        await first_started.wait()
        await orch.pause_job(job.id)
        gate.set()
        snap = await orch.wait(job.id, timeout=5)
        assert snap.job.status is JobStatus.PAUSED
        assert calls == ["i0"]
        assert snap.steps[0].counts[ItemStatus.AVAILABLE] == 2
        await orch.resume_job(job.id)
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert len(calls) == 3


async def test_cancel_stops_running_handlers_and_leaves_nothing_processing() -> None:
    """Cancelling cancels running handlers cooperatively; every open item ends cancelled."""
    started = anyio.Event()
    finished: list[str] = []

    async def forever(ctx: Any) -> None:
        started.set()
        await anyio.sleep_forever()
        finished.append(ctx.item_key)  # pragma: no cover - never reached

    p = pipeline(auto("a", "forever", concurrency=2), auto("b", "ok"))
    async with running(p, registry=handlers(forever=forever, ok=ok)) as orch:
        job = await orch.create_job("p", items(4))
        await started.wait()
        result = await orch.cancel_job(job.id)
        snap = await orch.wait(job.id, timeout=5)
        await anyio.lowlevel.checkpoint()
    assert snap.job.status is JobStatus.CANCELLED
    assert snap.steps[0].counts == {ItemStatus.CANCELLED: 4}
    assert len(result.affected) == 4
    assert finished == []
    assert [a.action for a in snap.actions] == []


async def test_a_worker_whose_claim_was_cancelled_runs_the_next_claims() -> None:
    """With one worker, cancelling the job it is running leaves that worker free to run
    another job's items to completion, none of them cancelled."""
    started = anyio.Event()

    async def forever(ctx: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    stuck = pipeline(auto("a", "forever"), name="stuck")
    async with running(
        stuck, THREE, registry=handlers(forever=forever, ok=ok), max_concurrency=1
    ) as orch:
        first = await orch.create_job("stuck", items(1))
        await started.wait()
        await orch.cancel_job(first.id)
        second = await orch.create_job("p", items(3))
        snap = await orch.wait(second.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert [step.counts for step in snap.steps] == [{ItemStatus.PASSED: 3}] * 3


async def test_cancelled_job_refuses_further_actions() -> None:
    """Acting on a cancelled job raises Conflict and writes nothing."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(1), start=False)
        await orch.cancel_job(job.id)
        version = (await orch.snapshot(job.id)).version
        for act in (orch.start_job, orch.pause_job, orch.resume_job, orch.cancel_job):
            with pytest.raises(Conflict):
                await act(job.id)
        assert (await orch.snapshot(job.id)).version == version


async def test_unknown_ids_raise_not_found() -> None:
    """Unknown pipeline, job and step names raise NotFound."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        with pytest.raises(NotFound):
            await orch.create_job("nope", items(1))
        with pytest.raises(NotFound):
            await orch.snapshot("nope")
        job = await orch.create_job("p", items(1))
        with pytest.raises(NotFound):
            await orch.retry_items(job.id, "zzz")
        with pytest.raises(NotFound):
            await orch.retry_items(job.id, "a", ["no-such-item"])


async def test_bad_items_and_metadata_are_refused_before_writing() -> None:
    """Duplicate keys, bad keys, oversize metadata and NaN are typed errors; no job is made."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        key = {"idempotency_key": "batch"}
        with pytest.raises(InvalidInput, match=r"items\[1\].key: duplicate"):
            await orch.create_job("p", [{"key": "x"}, {"key": "x"}], **key)
        with pytest.raises(InvalidInput, match=r"items\[0\].key"):
            await orch.create_job("p", [{"key": "bad\nkey"}], **key)
        with pytest.raises(LimitExceeded) as caught:
            await orch.create_job("p", items(1), metadata={"blob": "x" * 300_000}, **key)
        assert caught.value.field == "metadata"
        assert caught.value.limit == 256 * 1024
        with pytest.raises(InvalidInput, match="JSON cannot carry"):
            await orch.create_job("p", [{"key": "k", "data": {"v": float("nan")}}], **key)
        with pytest.raises(InvalidInput, match="u0000"):
            await orch.create_job("p", [{"key": "k", "data": {"v": "a\x00b"}}], **key)
        deep: dict[str, Any] = {}
        for _ in range(40):
            deep = {"d": deep}
        with pytest.raises(InvalidInput, match="deeper than 32"):
            await orch.create_job("p", [{"key": "k", "data": deep}], **key)
        job = await orch.create_job("p", items(3), **key)
        snap = await orch.wait(job.id, timeout=5)
    assert snap.totals["items"] == 3  # the key was still free: nothing had been stored


async def test_job_keeps_running_on_the_definition_it_started_with() -> None:
    """A job pins its pipeline version and hash; registering a new version does not change it."""
    v1 = pipeline(auto("a", "ok"), auto("b", "ok"))
    v2 = Pipeline.load({**v1.to_dict(), "version": "2", "steps": [auto("a", "ok")]})
    async with running(v1, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(2), start=False)
        orch.register(v2)
        await orch.start_job(job.id)
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.version == "1"
    assert snap.job.definition_hash == v1.content_hash
    assert [s.key for s in snap.steps] == ["a", "b"]
    assert snap.job.status is JobStatus.COMPLETED


async def test_auto_process_off_waits_for_process_step() -> None:
    """With auto_process off, a step's items wait until a person starts the step."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(2), auto_process=False)
        snap = await orch.wait(job.id, timeout=5)
        assert snap.steps[0].status is StepStatus.ACTION_REQUIRED
        assert ("process", "a") in [(a.action, a.step) for a in snap.actions]
        await orch.process_step(job.id, "a")
        snap = await orch.wait(job.id, timeout=5)
        assert snap.steps[0].counts == {ItemStatus.PASSED: 2}
        assert snap.steps[1].status is StepStatus.ACTION_REQUIRED
        await orch.process_step(job.id, "b")
        await orch.process_step(job.id, "c")
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED


async def test_stopping_hands_running_work_back_and_a_restart_finishes_it() -> None:
    """On shutdown held items go back to available; a new orchestrator on the storage ends them."""
    from stepflow import Orchestrator

    from . import kit

    started = anyio.Event()
    release = {"block": True}

    async def maybe_block(ctx: Any) -> str:
        if release["block"]:
            started.set()
            await anyio.sleep_forever()
        return "done"

    p = pipeline(auto("a", "maybe_block"), auto("b", "ok"))
    registry = handlers(maybe_block=maybe_block, ok=ok)
    storage = kit.STORAGE["factory"](None)
    async with Orchestrator(storage, handlers=registry, pipelines=[p]) as orch:
        job = await orch.create_job("p", items(2))
        await started.wait()
    async with Orchestrator(storage, handlers=registry, pipelines=[p], run_workers=False) as orch:
        page = await orch.list_items(job.id, "a")
        assert {i.status for i in page.items} == {ItemStatus.AVAILABLE}
        events = await orch.events(job.id)
        released = {e.item_id for e in events if e.data.get("reason") == "released at shutdown"}
        assert released == {i.id for i in page.items}
    release["block"] = False
    async with Orchestrator(storage, handlers=registry, pipelines=[p]) as orch:
        snap = await orch.wait(job.id, timeout=10)
    assert snap.job.status is JobStatus.COMPLETED
    assert snap.steps[1].counts == {ItemStatus.PASSED: 2}


def _count_creations(storage: Any) -> list[int]:
    """Spy on ``storage.exchange``: the number of creating changes in each call."""
    sizes: list[int] = []
    exchange = storage.exchange

    async def spy(changes: Any, *args: Any) -> Any:
        sizes.append(sum(change.create is not None for change in changes))
        return await exchange(changes, *args)

    storage.exchange = spy
    return sizes


async def test_jobs_created_together_share_the_writers_transactions() -> None:
    """Twenty jobs created at once go to storage in shared exchanges, and each completes."""
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        sizes = _count_creations(orch.storage)
        created: list[str] = []

        async def create(n: int) -> None:
            created.append((await orch.create_job("p", items(1), metadata={"n": n})).id)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(create, n)
        snaps = [await orch.wait(job_id, timeout=10) for job_id in created]
    assert len(set(created)) == 20
    assert sum(sizes) == 20 and max(sizes) > 1
    assert {snap.job.status for snap in snaps} == {JobStatus.COMPLETED}


async def test_a_process_without_workers_batches_creations_and_claims_nothing() -> None:
    """With run_workers=False, jobs created at once share writes and their items wait."""
    from stepflow import Orchestrator

    from . import kit

    storage = kit.STORAGE["factory"](None)
    sizes = _count_creations(storage)
    async with Orchestrator(
        storage, handlers=handlers(ok=ok), pipelines=[THREE], run_workers=False
    ) as orch:

        async def create(key: str) -> None:
            await orch.create_job("p", items(2), idempotency_key=key)

        async with anyio.create_task_group() as tg:
            for key in ("x", "y", "y", "z"):  # one key twice: the same job comes back
                tg.start_soon(create, key)
        jobs = [await orch.create_job("p", items(2), idempotency_key=k) for k in "xyz"]
        pages = [await orch.list_items(job.id, "a") for job in jobs]
    assert len({job.id for job in jobs}) == 3
    assert max(sizes) > 1
    for page in pages:
        assert {item.status for item in page.items} == {ItemStatus.AVAILABLE}


async def test_a_job_too_large_to_hold_at_once_is_created_whole_in_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A creation over the part size goes to storage in parts and is one job, in order."""
    from stepflow import _orchestrator

    monkeypatch.setattr(_orchestrator, "_CREATION_PART", 3)
    async with running(THREE, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(10))
        snap = await orch.wait(job.id, timeout=10)
        page = await orch.list_items(job.id, "c", limit=100)
        draft = await orch.create_job("p", items(7), start=False)
    assert snap.job.status is JobStatus.COMPLETED
    assert snap.steps[2].counts == {ItemStatus.PASSED: 10}
    assert [item.key for item in page.items] == [f"i{k}" for k in range(10)]
    assert draft.status is JobStatus.DRAFT
