"""Running handlers: retries, timeouts, threads, concurrency, emitted items, people, leases."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stepflow import (
    ErrorClassifier,
    ErrorKind,
    ItemStatus,
    JobStatus,
    RateLimited,
    StepStatus,
    TransientError,
)
from stepflow.testing import FakeClock

from .kit import auto, handlers, items, ok, pipeline, running

pytestmark = pytest.mark.anyio


async def until(orch: Any, job_id: str, predicate: Any) -> Any:
    """Wait (on the job's events, not on time) until the snapshot satisfies predicate."""
    with anyio.fail_after(5):
        while True:
            snap = await orch.snapshot(job_id)
            if predicate(snap):
                return snap
            await orch.broker.wait_job(job_id, snap.version, timeout=0.5)


async def test_transient_failures_retry_with_stored_backoff() -> None:
    """Transient errors retry after 2 s then 4 s of (fake) time, and attempts are counted."""
    clock = FakeClock()
    starts: list[float] = []

    async def flaky(ctx: Any) -> str:
        starts.append(clock.now())
        if ctx.attempt < 3:
            raise TransientError("503")
        return "done"

    retry = {"max_attempts": 3, "initial_delay": 2, "multiplier": 2}
    p = pipeline(auto("a", "flaky", retry=retry))
    async with running(p, registry=handlers(flaky=flaky), clock=clock) as orch:
        job = await orch.create_job("p", items(1))
        snap = await until(orch, job.id, lambda s: s.steps[0].status is StepStatus.RETRYING)
        [waiting] = (await orch.list_items(job.id, "a")).items
        assert waiting.next_attempt_at == clock.now() + 2
        assert waiting.error is not None and waiting.error["kind"] == "transient"
        clock.advance(2)
        await until(
            orch, job.id, lambda s: len(starts) == 2 and s.steps[0].status is StepStatus.RETRYING
        )
        clock.advance(4)
        snap = await orch.wait(job.id, timeout=5)
        [done] = (await orch.list_items(job.id, "a")).items
    assert snap.job.status is JobStatus.COMPLETED
    assert [t - starts[0] for t in starts] == [0, 2, 6]
    assert done.attempts == 3
    assert done.error is None


async def test_attempts_run_out_into_failed() -> None:
    """After max_attempts transient failures the item fails with the last error."""

    async def down(ctx: Any) -> None:
        raise TransientError(f"attempt {ctx.attempt}")

    p = pipeline(auto("a", "down", retry={"max_attempts": 3, "initial_delay": 0}))
    async with running(p, registry=handlers(down=down)) as orch:
        job = await orch.create_job("p", items(1))
        snap = await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "a")).items
    assert snap.job.status is JobStatus.FAILED
    assert item.attempts == 3
    assert item.error == {
        "kind": "transient",
        "message": "attempt 3",
        "type": "TransientError",
        "attempt": 3,
    }


async def test_retry_after_wins_over_the_policy() -> None:
    """A RateLimited error's retry_after sets the next attempt time."""
    clock = FakeClock()

    async def limited(ctx: Any) -> str:
        if ctx.attempt == 1:
            raise RateLimited("429", retry_after=30)
        return "ok"

    p = pipeline(auto("a", "limited", retry={"initial_delay": 1}))
    async with running(p, registry=handlers(limited=limited), clock=clock) as orch:
        job = await orch.create_job("p", items(1))
        await until(orch, job.id, lambda s: s.steps[0].status is StepStatus.RETRYING)
        [item] = (await orch.list_items(job.id, "a")).items
        assert item.next_attempt_at == clock.now() + 30
        clock.advance(29)
        assert (await orch.snapshot(job.id)).steps[0].status is StepStatus.RETRYING
        clock.advance(1)
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED


async def test_permanent_and_unknown_errors_are_not_retried() -> None:
    """Unknown exceptions are permanent unless the classifier says otherwise."""
    calls: list[int] = []

    async def boom(ctx: Any) -> None:
        calls.append(ctx.attempt)
        raise KeyError("missing")

    p = pipeline(auto("a", "boom", retry={"max_attempts": 5, "initial_delay": 0}))
    async with running(p, registry=handlers(boom=boom)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
    assert calls == [1]
    calls.clear()
    classifier = ErrorClassifier()
    classifier.register(KeyError, ErrorKind.TRANSIENT)
    async with running(p, registry=handlers(boom=boom), classifier=classifier) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "a")).items
    assert calls == [1, 2, 3, 4, 5]
    assert item.error is not None and item.error["type"] == "KeyError"


async def test_timeout_cancels_the_handler_and_counts_as_timeout() -> None:
    """A handler running past the step timeout is cancelled and classified as a timeout."""

    async def hang(ctx: Any) -> None:
        await anyio.sleep_forever()

    p = pipeline(auto("a", "hang", timeout=0.05, retry={"max_attempts": 1}))
    async with running(p, registry=handlers(hang=hang)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "a")).items
    assert item.status is ItemStatus.FAILED
    assert item.error is not None and item.error["kind"] == "timeout"


async def test_plain_functions_run_in_worker_threads() -> None:
    """A sync handler runs off the event loop's thread."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def blocking(ctx: Any) -> int:
        threads.append(threading.get_ident())
        return 1

    p = pipeline(auto("a", "blocking"))
    async with running(p, registry=handlers(blocking=blocking)) as orch:
        job = await orch.create_job("p", items(3))
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert threads and loop_thread not in threads


async def test_step_concurrency_caps_items_running_at_once() -> None:
    """No more than `concurrency` items of a job run a step at the same time."""
    active = 0
    peak = 0

    async def busy(ctx: Any) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        active -= 1

    p = pipeline(auto("a", "busy", concurrency=3))
    async with running(p, registry=handlers(busy=busy)) as orch:
        job = await orch.create_job("p", items(20))
        await orch.wait(job.id, timeout=5)
    assert peak == 3


async def test_a_slow_item_does_not_hold_back_the_others() -> None:
    """Items move to the next step as soon as each finishes, all-settled."""
    gate = anyio.Event()

    async def first(ctx: Any) -> None:
        if ctx.item_key == "i0":
            await gate.wait()

    p = pipeline(auto("a", "first", concurrency=5), auto("b", "ok"))
    async with running(p, registry=handlers(first=first, ok=ok)) as orch:
        job = await orch.create_job("p", items(4))
        snap = await until(orch, job.id, lambda s: s.steps[1].counts.get(ItemStatus.PASSED) == 3)
        assert snap.steps[0].counts[ItemStatus.PROCESSING] == 1
        gate.set()
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED


async def test_one_failure_does_not_sink_the_batch() -> None:
    """A failing item fails alone; the others finish and the job completes."""

    async def picky(ctx: Any) -> None:
        if ctx.item_key == "i1":
            raise ValueError("bad row")

    p = pipeline(auto("a", "picky"), auto("b", "ok"))
    async with running(p, registry=handlers(picky=picky, ok=ok)) as orch:
        job = await orch.create_job("p", items(4))
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert snap.steps[0].counts == {ItemStatus.PASSED: 3, ItemStatus.FAILED: 1}
    assert snap.totals == {"items": 4, "finished": 3, "failed": 1, "cancelled": 0, "open": 0}
    assert ("retry", "a") in [(a.action, a.step) for a in snap.actions]


async def test_ask_person_waits_for_input_and_reruns_with_it() -> None:
    """A handler can ask for a person; the submitted payload reaches its next run."""
    seen: list[Any] = []

    async def search(ctx: Any) -> Any:
        seen.append(ctx.input)
        if ctx.input is None:
            ctx.ask_person("no candidates found")
        return {"found": ctx.input["value"]}

    p = pipeline(auto("search", "search", action="choice"), auto("b", "ok"))
    async with running(p, registry=handlers(search=search, ok=ok)) as orch:
        job = await orch.create_job("p", items(1))
        snap = await orch.wait(job.id, timeout=5)
        assert snap.steps[0].status is StepStatus.ACTION_REQUIRED
        [item] = (await orch.list_items(job.id, "search")).items
        assert item.status is ItemStatus.AWAITING_INPUT
        assert item.reason == "no candidates found"
        await orch.submit(job.id, "search", {item.id: {"value": 7}})
        snap = await orch.wait(job.id, timeout=5)
        [done] = (await orch.list_items(job.id, "search")).items
    assert snap.job.status is JobStatus.COMPLETED
    assert seen == [None, {"value": 7, "note": ""}]
    assert done.output == {"found": 7}


async def test_handler_skip_moves_the_item_on() -> None:
    """ctx.skip ends the item skipped here with the reason; it continues to the next step."""

    async def maybe(ctx: Any) -> None:
        ctx.skip("nothing to do")

    p = pipeline(auto("a", "maybe"), auto("b", "ok"))
    async with running(p, registry=handlers(maybe=maybe, ok=ok)) as orch:
        job = await orch.create_job("p", items(2))
        snap = await orch.wait(job.id, timeout=5)
        page = await orch.list_items(job.id, "a")
    assert snap.steps[0].counts == {ItemStatus.SKIPPED: 2}
    assert snap.steps[1].counts == {ItemStatus.PASSED: 2}
    assert {i.reason for i in page.items} == {"nothing to do"}


async def test_run_if_skips_a_step_with_its_reason() -> None:
    """A step whose run condition does not hold is skipped, naming the condition."""

    async def tag(ctx: Any) -> dict[str, bool]:
        return {"vip": ctx.data["n"] == 0}

    p = pipeline(auto("a", "tag"), auto("b", "ok", run_if=["outputs.a.vip"]), auto("c", "ok"))
    async with running(p, registry=handlers(tag=tag, ok=ok)) as orch:
        job = await orch.create_job("p", items(3))
        snap = await orch.wait(job.id, timeout=5)
        skipped = (await orch.list_items(job.id, "b", status="skipped")).items
    assert snap.steps[1].counts == {ItemStatus.PASSED: 1, ItemStatus.SKIPPED: 2}
    assert {i.reason for i in skipped} == {"condition not met: outputs.a.vip truthy"}
    assert snap.steps[2].counts == {ItemStatus.PASSED: 3}


async def test_expanding_step_emits_new_items() -> None:
    """An expands step turns each input item into the items its handler emits."""

    async def scan(ctx: Any) -> None:
        for n in range(3):
            ctx.emit(f"{ctx.item_key}-lead{n}", {"page": ctx.item_key, "n": n})

    p = pipeline(auto("scan", "scan", expands=True, advance="manual"), auto("enrich", "ok"))
    async with running(p, registry=handlers(scan=scan, ok=ok)) as orch:
        job = await orch.create_job("p", items(2))
        snap = await orch.wait(job.id, timeout=5)
        assert snap.steps[0].counts == {ItemStatus.CANCELLED: 2, ItemStatus.PROCESSED: 6}
        chosen = (await orch.list_items(job.id, "scan", status="processed")).items[:4]
        await orch.pass_items(job.id, "scan", [lead.id for lead in chosen])
        snap = await orch.wait(job.id, timeout=5)
        page = await orch.list_items(job.id, "enrich")
    assert snap.steps[1].counts == {ItemStatus.PASSED: 4}
    assert snap.totals["items"] == 8
    assert [i.key for i in page.items] == [lead.key for lead in chosen]
    assert {lead.data["page"] for lead in chosen} <= {"i0", "i1"}


async def test_output_that_is_not_json_fails_naming_the_type() -> None:
    """A handler returning a non-JSON value fails the item permanently, naming the type."""

    async def odd(ctx: Any) -> object:
        return {"when": object()}

    p = pipeline(auto("a", "odd"))
    async with running(p, registry=handlers(odd=odd)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "a")).items
    assert item.status is ItemStatus.FAILED
    assert item.error is not None
    assert item.error["message"] == "output is not JSON-serialisable: object"


async def test_rate_limit_spaces_calls_across_items() -> None:
    """A step rate limit of 1 per 60 s spaces starts by 60 s of clock time."""
    clock = FakeClock()
    starts: list[float] = []

    async def call(ctx: Any) -> None:
        starts.append(clock.now())

    p = pipeline(auto("a", "call", concurrency=5, rate_limit={"calls": 1, "per_seconds": 60}))
    async with running(p, registry=handlers(call=call), clock=clock) as orch:
        job = await orch.create_job("p", items(3))
        for expected in (1, 2):
            await until(orch, job.id, lambda s, n=expected: len(starts) == n)
            clock.advance(60)
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert [t - starts[0] for t in starts] == [0, 60, 120]


async def test_a_result_from_a_lost_lease_is_refused() -> None:
    """When a lease expires and is rescued, the first holder's late result changes nothing."""
    clock = FakeClock()
    release = anyio.Event()
    runs: list[int] = []

    async def slow(ctx: Any) -> dict[str, int]:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            await release.wait()
        return {"attempt": ctx.attempt}

    p = pipeline(auto("a", "slow", retry={"initial_delay": 0}))
    async with running(p, registry=handlers(slow=slow), clock=clock, lease_seconds=30) as orch:
        job = await orch.create_job("p", items(1))
        await until(orch, job.id, lambda s: runs == [1])
        clock.advance(31)
        rescued = await orch.storage.rescue_expired(orch.engine._rescue_delay)
        assert rescued == 1
        await until(orch, job.id, lambda s: s.job.status is JobStatus.COMPLETED)
        release.set()
        with anyio.fail_after(5):
            while orch.engine.running:  # the first holder tries to commit, and is refused
                await anyio.lowlevel.checkpoint()
        [item] = (await orch.list_items(job.id, "a")).items
        events = await orch.events(job.id)
    assert runs == [1, 2]
    assert item.output == {"attempt": 2}
    assert item.attempts == 2
    rescue = [e for e in events if e.data.get("reason") == "lease expired"]
    assert len(rescue) == 1 and rescue[0].data["to"] == "retrying"


async def test_asking_for_a_person_without_an_action_fails_the_item() -> None:
    """ask_person at a step no person can answer fails the item instead of stranding it."""

    async def ask(ctx: Any) -> None:
        ctx.ask_person("need help")

    p = pipeline(auto("a", "ask"))
    async with running(p, registry=handlers(ask=ask)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "a")).items
    assert item.status is ItemStatus.FAILED
    assert item.error is not None and "has no action" in item.error["message"]


async def test_error_details_are_kept_with_the_error() -> None:
    """A StepError's JSON details are stored with the item's error."""
    from stepflow import PermanentError

    async def reject(ctx: Any) -> None:
        raise PermanentError("rejected", details={"status": 422, "field": "gst"})

    p = pipeline(auto("a", "reject"))
    async with running(p, registry=handlers(reject=reject)) as orch:
        job = await orch.create_job("p", items(1))
        await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "a")).items
    assert item.error is not None
    assert item.error["details"] == {"status": 422, "field": "gst"}


async def test_progress_reports_reach_the_item_and_the_event_feed() -> None:
    """report_progress is written to the item and as an item.progress event while it runs."""
    gate = anyio.Event()

    async def long(ctx: Any) -> None:
        ctx.report_progress(3, 10, "pages scanned")
        await gate.wait()

    p = pipeline(auto("a", "long"))
    async with running(p, registry=handlers(long=long)) as orch:
        job = await orch.create_job("p", items(1))
        with anyio.fail_after(5):
            async for event in orch.watch(job.id):
                if event.type == "item.progress":
                    break
        [item] = (await orch.list_items(job.id, "a")).items
        gate.set()
        await orch.wait(job.id, timeout=5)
    assert event.data == {"done": 3, "total": 10, "message": "pages scanned"}
    assert item.progress == {"done": 3, "total": 10, "message": "pages scanned"}
