"""A person's actions: pass, submit, retry, skip, discard; authorisation; action ids."""

from __future__ import annotations

from typing import Any

import pytest

from stepflow import (
    ActionContext,
    ActionRejected,
    ActionRequest,
    Conflict,
    Handlers,
    InvalidInput,
    ItemStatus,
    JobStatus,
    PermanentError,
    PermissionDenied,
    StepStatus,
)
from stepflow.testing import MemoryStorage

from .kit import Choice, auto, handlers, ids_at, items, ok, pipeline, running

pytestmark = pytest.mark.anyio

MANUAL = pipeline(auto("scan", "ok", advance="manual"), auto("enrich", "ok"))
PICK = pipeline(
    auto("a", "ok"),
    {"key": "pick", "type": "action_required", "action": "choice"},
    auto("z", "echo"),
)


async def echo(ctx: Any) -> Any:
    return ctx.outputs["pick"]


async def test_pass_moves_selected_items_and_counts_exactly() -> None:
    """Passing 2 of 5 processed items moves exactly those; counts follow."""
    async with running(MANUAL, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(5))
        snap = await orch.wait(job.id, timeout=5)
        assert snap.steps[0].counts == {ItemStatus.PROCESSED: 5}
        assert snap.steps[0].status is StepStatus.ACTION_REQUIRED
        chosen = (await ids_at(orch, job.id, "scan"))[:2]
        result = await orch.pass_items(job.id, "scan", chosen)
        snap = await orch.wait(job.id, timeout=5)
    assert result.affected == chosen
    assert snap.steps[0].counts == {ItemStatus.PROCESSED: 3, ItemStatus.PASSED: 2}
    assert snap.steps[1].counts == {ItemStatus.PASSED: 2}
    assert snap.steps[1].received == 2
    assert snap.job.status is JobStatus.IN_PROGRESS


async def test_pass_without_ids_takes_all_processed_and_completes_the_job() -> None:
    """pass_items with no ids passes every processed item."""
    async with running(MANUAL, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(3))
        await orch.wait(job.id, timeout=5)
        result = await orch.pass_items(job.id, "scan")
        snap = await orch.wait(job.id, timeout=5)
    assert len(result.affected) == 3
    assert snap.job.status is JobStatus.COMPLETED


async def test_pass_refuses_items_in_the_wrong_status_and_writes_nothing() -> None:
    """Passing an item that already passed is a Conflict naming it; nothing changes."""
    async with running(MANUAL, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(2))
        await orch.wait(job.id, timeout=5)
        first, second = await ids_at(orch, job.id, "scan")
        await orch.pass_items(job.id, "scan", [first])
        version = (await orch.wait(job.id, timeout=5)).version  # the engine is idle now
        with pytest.raises(Conflict, match=f"{first} is passed"):
            await orch.pass_items(job.id, "scan", [second, first])
        assert (await orch.snapshot(job.id)).version == version


async def test_bulk_submit_with_defaults_applies_to_all_and_per_item_wins() -> None:
    """One submit answers many items; defaults merge under per-item payloads."""
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(4))
        snap = await orch.wait(job.id, timeout=5)
        assert snap.steps[1].counts == {ItemStatus.AWAITING_INPUT: 4}
        waiting = await ids_at(orch, job.id, "pick")
        payloads: dict[str, dict[str, Any]] = {i: {} for i in waiting}
        payloads[waiting[0]] = {"value": 9}
        await orch.submit(job.id, "pick", payloads, defaults={"value": 1, "note": "bulk"})
        snap = await orch.wait(job.id, timeout=5)
        outputs = {i.id: i.output for i in (await orch.list_items(job.id, "z")).items}
    assert snap.job.status is JobStatus.COMPLETED
    assert outputs[waiting[0]] == {"value": 9, "note": "bulk"}
    assert outputs[waiting[1]] == {"value": 1, "note": "bulk"}


async def test_a_submit_reads_once_before_it_writes() -> None:
    """A submit with an action id reads the job, the id and the items in one storage read;
    its repeat is answered from that read alone."""
    reads: list[str] = []
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(2))
        await orch.wait(job.id, timeout=5)
        waiting = await ids_at(orch, job.id, "pick")
        storage: Any = orch.storage
        for name in ("get_job", "get_action", "get_visits", "get_items", "item_outputs"):
            original = getattr(storage, name)

            async def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
                reads.append(_name)
                return await _original(*args)

            setattr(storage, name, spy)
        answer = {i: {"value": 1} for i in waiting}
        first = await orch.submit(job.id, "pick", answer, action_id="approve-1")
        again = await orch.submit(job.id, "pick", answer, action_id="approve-1")
        snap = await orch.wait(job.id, timeout=5)
    assert again.affected == first.affected == waiting
    assert snap.job.status is JobStatus.COMPLETED
    if isinstance(orch.storage, MemoryStorage):  # it keeps the port's default reads
        assert {"get_job", "get_action", "get_visits"} <= set(reads)
    else:
        assert reads == []  # everything came from one action_reads per submit


async def test_invalid_payloads_are_all_reported_and_nothing_is_written() -> None:
    """If any payload of a bulk submit is invalid, ActionRejected lists them; none applies."""
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(3))
        await orch.wait(job.id, timeout=5)
        a, b, c = await ids_at(orch, job.id, "pick")
        version = (await orch.snapshot(job.id)).version
        with pytest.raises(ActionRejected) as caught:
            await orch.submit(job.id, "pick", {a: {"value": 1}, b: {"value": "x"}, c: {}})
        assert set(caught.value.problems) == {b, c}
        assert "value" in caught.value.problems[b][0]
        assert (await orch.snapshot(job.id)).version == version
        too_big = r"payload is 700.. bytes, over the limit of 65536"
        with pytest.raises(ActionRejected, match=too_big):
            await orch.submit(job.id, "pick", {a: {"value": 1, "note": "x" * 70_000}})
        assert await ids_at(orch, job.id, "pick", "awaiting_input") == [a, b, c]


async def test_validation_hook_can_reject_a_payload() -> None:
    """The action's validator sees the item and can reject its payload."""

    def only_even(payload: Choice, ctx: ActionContext) -> None:
        if payload.value % 2:
            raise ValueError(f"{ctx.item_key}: value must be even")

    registry = handlers(ok=ok, echo=echo)
    registry.action("choice", Choice, validator=only_even)
    async with running(PICK, registry=registry) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = await ids_at(orch, job.id, "pick")
        with pytest.raises(ActionRejected, match="i0: value must be even"):
            await orch.submit(job.id, "pick", {item: {"value": 3}})
        await orch.submit(job.id, "pick", {item: {"value": 4}})
        assert (await orch.wait(job.id, timeout=5)).job.status is JobStatus.COMPLETED


async def test_submit_to_a_step_without_action_is_a_conflict() -> None:
    """Only steps with an action model take payloads."""
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = await ids_at(orch, job.id, "a")
        with pytest.raises(Conflict, match="takes no payload"):
            await orch.submit(job.id, "a", {item: {"value": 1}})


async def test_retry_runs_failed_items_again_and_reopens_the_job() -> None:
    """Failed items go back to available on retry; a failed job reopens and completes."""
    broken = {"on": True}

    async def flaky(ctx: Any) -> str:
        if broken["on"]:
            raise PermanentError("service down")
        return "ok"

    p = pipeline(auto("a", "flaky"))
    async with running(p, registry=handlers(flaky=flaky)) as orch:
        job = await orch.create_job("p", items(3))
        snap = await orch.wait(job.id, timeout=5)
        assert snap.job.status is JobStatus.FAILED
        assert snap.steps[0].status is StepStatus.FAILED
        page = await orch.list_items(job.id, "a")
        assert page.items[0].error is not None
        assert page.items[0].error["kind"] == "permanent"
        broken["on"] = False
        result = await orch.retry_items(job.id, "a")
        snap = await orch.wait(job.id, timeout=5)
        after = await orch.list_items(job.id, "a")
    assert len(result.affected) == 3
    assert snap.job.status is JobStatus.COMPLETED
    assert {i.attempts for i in after.items} == {2}


async def test_retry_with_nothing_failed_is_a_conflict() -> None:
    """Retrying a step without failed items raises Conflict."""
    async with running(MANUAL, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        with pytest.raises(Conflict, match="no failed items"):
            await orch.retry_items(job.id, "scan")


async def test_skip_moves_an_item_on_without_the_step() -> None:
    """A skipped item ends skipped at that step, with the reason, and goes on."""
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(2))
        await orch.wait(job.id, timeout=5)
        first, _ = await ids_at(orch, job.id, "pick")
        await orch.skip_item(job.id, "pick", first, reason="known customer")
        snap = await orch.wait(job.id, timeout=5)
        [skipped] = (await orch.list_items(job.id, "pick", status="skipped")).items
    assert skipped.id == first
    assert skipped.reason == "known customer"
    assert snap.steps[1].counts == {ItemStatus.SKIPPED: 1, ItemStatus.AWAITING_INPUT: 1}
    assert snap.steps[2].received == 1


async def test_discard_cancels_items_and_the_job_settles_without_them() -> None:
    """Discarded items end cancelled; the job completes with the rest."""
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(2))
        await orch.wait(job.id, timeout=5)
        first, second = await ids_at(orch, job.id, "pick")
        await orch.discard_items(job.id, "pick", [first])
        await orch.submit(job.id, "pick", {second: {"value": 2}})
        snap = await orch.wait(job.id, timeout=5)
    assert snap.steps[1].counts == {ItemStatus.CANCELLED: 1, ItemStatus.PASSED: 1}
    assert snap.job.status is JobStatus.COMPLETED
    assert snap.totals["cancelled"] == 1


async def test_the_same_action_id_changes_nothing_the_second_time() -> None:
    """A double-clicked action with one action id applies once and reports the duplicate."""
    async with running(MANUAL, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(3))
        await orch.wait(job.id, timeout=5)
        [first, *_] = await ids_at(orch, job.id, "scan")
        once = await orch.pass_items(job.id, "scan", [first], action_id="click-1")
        await orch.wait(job.id, timeout=5)
        version = (await orch.snapshot(job.id)).version
        twice = await orch.pass_items(job.id, "scan", None, action_id="click-1")
        assert (await orch.snapshot(job.id)).version == version
    assert not once.duplicate
    assert twice.duplicate
    assert twice.affected == [first]


async def test_authorisation_hook_denies_and_nothing_is_written() -> None:
    """A denied action raises PermissionDenied and leaves the job as it was."""
    asked: list[ActionRequest] = []

    async def only_admins(request: ActionRequest) -> bool:
        asked.append(request)
        return "admin" in request.actor.roles or request.actor.id == "system"

    from stepflow import Actor

    async with running(MANUAL, registry=handlers(ok=ok), authorize=only_admins) as orch:
        job = await orch.create_job("p", items(2))
        await orch.wait(job.id, timeout=5)
        version = (await orch.snapshot(job.id)).version
        with pytest.raises(PermissionDenied, match="'bob' may not pass"):
            await orch.pass_items(job.id, "scan", actor="bob")
        assert (await orch.snapshot(job.id)).version == version
        await orch.pass_items(job.id, "scan", actor=Actor(id="ann", roles=frozenset({"admin"})))
        events = await orch.events(job.id, after=version)
    assert asked[-2].action == "pass"
    assert asked[-2].actor.id == "bob"
    assert events[0].type == "action"
    assert events[0].actor == "ann"
    assert events[0].data["action"] == "pass"


async def test_action_ids_and_reasons_have_limits() -> None:
    """Oversize action ids and reasons are typed errors."""
    async with running(PICK, registry=handlers(ok=ok, echo=echo)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = await ids_at(orch, job.id, "pick")
        with pytest.raises(InvalidInput, match="action_id"):
            await orch.skip_item(job.id, "pick", item, action_id="x" * 300)
        with pytest.raises(InvalidInput, match="reason"):
            await orch.skip_item(job.id, "pick", item, reason="x" * 3000)


async def test_unbound_handler_is_refused_at_registration() -> None:
    """Registering a pipeline whose handler is not bound raises BindingError."""
    from stepflow import BindingError, Orchestrator

    with pytest.raises(BindingError, match="handler ok"):
        Orchestrator(handlers=Handlers(), pipelines=[MANUAL])


async def test_pass_at_a_review_step_takes_available_items_by_default() -> None:
    """At a step with no handler, pass with no ids passes the waiting items; then Conflict."""
    p = pipeline(auto("a", "ok"), {"key": "review", "type": "action_required", "advance": "manual"})
    async with running(p, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(2))
        snap = await orch.wait(job.id, timeout=5)
        assert ("pass", "review", 2) in [(a.action, a.step, a.count) for a in snap.actions]
        result = await orch.pass_items(job.id, "review")
        snap = await orch.wait(job.id, timeout=5)
        with pytest.raises(Conflict, match="no items to pass"):
            await orch.pass_items(job.id, "review")
    assert len(result.affected) == 2
    assert snap.job.status is JobStatus.COMPLETED


async def test_a_bad_actor_is_invalid_input() -> None:
    """An empty or unprintable actor id is a typed InvalidInput, not a raw validation error."""
    async with running(MANUAL, registry=handlers(ok=ok)) as orch:
        job = await orch.create_job("p", items(1))
        with pytest.raises(InvalidInput, match="actor"):
            await orch.pause_job(job.id, actor="")
