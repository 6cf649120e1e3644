"""A lease that expires while its handler still runs: the rescue wins, the late result loses.

Design decision: the race is staged, not hoped for: a fake clock expires the lease, the
first holder's handler is held on an event while a second orchestrator (another owner)
rescues, claims and runs the visit, and only then is the first handler let go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from stepflow import Handlers, JobStatus, LeaseLost, Orchestrator, Pipeline, StaleWrite
from stepflow.ports import Clock, CommitResult, Storage
from stepflow.testing import FakeClock

from ..backends import selected_backends, storage_factory

pytestmark = pytest.mark.anyio

#: Long in real time, so no heartbeat runs during the test: only the fake clock expires it.
LEASE = 300.0
PIPELINE = Pipeline.load(
    {
        "name": "race",
        "steps": [
            {"key": "work", "handler": "work", "retry": {"max_attempts": 3, "initial_delay": 0}}
        ],
    }
)


@pytest.fixture(params=selected_backends())
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    with storage_factory(request.param, tmp_path, request) as factory:
        yield factory


def _record_exchanges(
    storage: Storage, owner: str, results: list[CommitResult | Exception]
) -> None:
    """Keep every result the storage gives ``owner``'s writes of work (the first
    holder's), leaving out the job's creation."""
    exchange: Callable[..., Awaitable[Any]] = storage.exchange

    async def recording(changes: Any, who: str, *args: Any) -> Any:
        answer = await exchange(changes, who, *args)
        if who == owner:
            made = zip(changes, answer[0], strict=True)
            results.extend(result for change, result in made if change.create is None)
        return answer

    storage.exchange = recording  # type: ignore[method-assign,assignment]


@pytest.mark.parametrize("second_done_first", [True, False], ids=["after", "during"])
async def test_late_completion_after_rescue_is_refused(
    make_storage: Callable[[Clock | None], Storage],
    request: pytest.FixtureRequest,
    second_done_first: bool,
) -> None:
    """A rescued visit's first holder finishes late: refused, nothing written, one completion."""
    clock = FakeClock()
    first_storage = make_storage(clock)
    shared_memory = request.node.callspec.params["make_storage"] == "memory"
    second_storage = first_storage if shared_memory else make_storage(clock)
    running = {1: anyio.Event(), 2: anyio.Event()}
    release = {1: anyio.Event(), 2: anyio.Event()}
    if second_done_first:
        release[2].set()
    attempts: list[int] = []

    async def work(ctx: Any) -> dict[str, Any]:
        attempts.append(ctx.attempt)
        running[ctx.attempt].set()
        await release[ctx.attempt].wait()
        return {"attempt": ctx.attempt}

    handlers = Handlers()
    handlers.add("work", work)
    first = Orchestrator(
        first_storage,
        handlers=handlers,
        pipelines=[PIPELINE],
        max_concurrency=1,  # busy with the held handler: it cannot claim the rescued visit
        lease_seconds=LEASE,
    )
    second = Orchestrator(
        second_storage, handlers=handlers, pipelines=[PIPELINE], lease_seconds=LEASE
    )
    first_results: list[CommitResult | Exception] = []
    _record_exchanges(first_storage, first.owner, first_results)
    async with first:
        job = await first.create_job("race", [{"key": "only"}])
        with anyio.fail_after(30):
            await running[1].wait()
        clock.advance(LEASE + 1)  # the first holder's lease is now expired
        async with second:  # its start-up rescue takes the visit back, then it claims it
            with anyio.fail_after(30):
                await running[2].wait()
            if second_done_first:
                await second.wait(job.id, timeout=30)
            events_before = await first.events(job.id)
            release[1].set()  # the first handler returns, long after losing its lease
            assert await first.drain(30)
            events_after_late_result = await first.events(job.id)
            release[2].set()
            snapshot = await second.wait(job.id, timeout=30)
        events = await first.events(job.id)
        (item,) = (await first.list_items(job.id, "work")).items
        outputs = await first.storage.item_outputs(job.id, [item.id])

    assert attempts == [1, 2]
    (refused,) = first_results
    assert isinstance(refused, StaleWrite), refused
    if not second_done_first:  # still processing, under a newer token: the fence refuses
        assert isinstance(refused, LeaseLost), refused
    print(f"\n[lease race] late completion refused: {type(refused).__name__}: {refused}")
    assert events_after_late_result == events_before  # the refused result wrote nothing
    assert snapshot.job.status is JobStatus.COMPLETED
    assert outputs[item.id] == {"work": {"attempt": 2}}
    statuses = [e for e in events if e.type == "item.status"]
    rescues = [e for e in statuses if e.data.get("reason") == "lease expired"]
    assert [(e.data["from"], e.data["to"], e.actor) for e in rescues] == [
        ("processing", "retrying", "rescuer")
    ]
    assert [e.data["attempt"] for e in statuses if e.data["to"] == "processed"] == [2]
