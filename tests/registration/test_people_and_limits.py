"""Person steps' validation, the global account rate limit, parallelism, fakes and demo."""

from __future__ import annotations

import contextlib
import io
import itertools

import pytest
from rich.console import Console

from stepflow import ActionRejected, ItemStatus
from stepflow_registration import FailureRates, FakeServices, Restaurant, ServiceError, run_demo

from .conftest import Answers, batch, by_key, drive, drive_on_clock, new_storage, running, start
from .watched import SteppingClock

pytestmark = pytest.mark.anyio


@pytest.mark.usefixtures("backend")
async def test_bulk_selection_rejects_a_non_candidate_and_writes_nothing() -> None:
    """One bad choice in a bulk selection rejects the whole action; nothing changes."""
    fakes = FakeServices()
    hold = Answers(choices={f"r{n:03d}": None for n in (1, 2, 3)})
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 3)
        await drive(orch, job_id, hold)
        searched = await by_key(orch, job_id, "contact_search")
        before = await orch.snapshot(job_id)
        good = searched["r001"].output["candidates"][0]["company_number"]
        other = searched["r003"].output["candidates"][0]["company_number"]
        payloads = {
            searched["r001"].id: {"company_number": good},
            searched["r002"].id: {"company_number": other},
            searched["r003"].id: {"no_match": True},
        }
        with pytest.raises(ActionRejected) as rejected:
            await orch.submit(job_id, "company_selection", payloads)
        after = await orch.snapshot(job_id)
        waiting = await by_key(orch, job_id, "company_selection")
    assert list(rejected.value.problems) == [searched["r002"].id]
    assert "not a candidate" in rejected.value.problems[searched["r002"].id][0]
    assert after.version == before.version
    assert {i.status for i in waiting.values()} == {ItemStatus.AWAITING_INPUT}


@pytest.mark.usefixtures("backend")
async def test_account_rate_limit_holds_across_concurrent_restaurants() -> None:
    """Account creations for concurrent restaurants start at least 60 s apart (fake clock)."""
    clock = SteppingClock()
    fakes = FakeServices(latency=0, clock=clock)
    fakes.script("register_account", "r002", "unavailable")  # its retry queues too
    async with running(fakes, clock=clock, scale=1.0) as (orch, pipeline):
        job_id = await start(orch, pipeline, 4)
        snapshot = await drive_on_clock(orch, job_id, clock, tick=5.0)
    starts = sorted(c.start for c in fakes.calls_of("register_account"))
    assert len(starts) == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(60 <= gap <= 65 for gap in gaps), gaps
    others = sorted(c.start for c in fakes.calls_of("generate_code_injections"))
    assert others[-1] - others[0] < 60  # the limit is on accounts only
    assert snapshot.totals["finished"] == 4


@pytest.mark.usefixtures("backend")
async def test_independent_substeps_run_in_parallel_and_waits_follow_the_policy() -> None:
    """Phase-1 and post-registration sub-steps overlap; a retry waits 2 s then 4 s (fake clock)."""
    clock = SteppingClock()
    fakes = FakeServices(latency=10, clock=clock)
    fakes.script("import_menu", "r001", "unavailable", "unavailable")
    async with running(fakes, clock=clock, scale=1.0) as (orch, pipeline):
        job_id = await start(orch, pipeline, 1)
        await drive_on_clock(orch, job_id, clock, tick=0.5)

    def window(*methods: str) -> tuple[float, float]:
        calls = [fakes.calls_of(m, "r001")[0] for m in methods]
        return max(c.start for c in calls), min(c.end for c in calls)

    last_start, first_end = window(
        "register_account", "generate_code_injections", "create_onboarding_user", "upload_images"
    )
    assert last_start < first_end
    last_start, first_end = window(
        "configure_website", "configure_services", "configure_payment", "import_menu"
    )
    assert last_start < first_end
    menu = fakes.calls_of("import_menu", "r001")
    waits = [b.start - a.end for a, b in itertools.pairwise(menu)]
    assert 2 <= waits[0] < 2.5 and 4 <= waits[1] < 4.5, waits


async def test_fakes_are_deterministic_for_a_seed() -> None:
    """The same seed gives the same outcomes, whatever the order of calls."""
    restaurants = [Restaurant(key=f"r{n}", name=f"R {n}") for n in range(30)]

    async def outcomes(order: list[Restaurant]) -> dict[str, str]:
        fakes = FakeServices(seed=9, latency=0, failures=FailureRates.realistic(0.5))
        for restaurant in order:
            with contextlib.suppress(ServiceError):  # only the logged outcome matters
                await fakes.extract_menu(restaurant)
        return {c.restaurant: c.outcome for c in fakes.calls}

    first = await outcomes(restaurants)
    assert first == await outcomes(list(reversed(restaurants)))
    assert len(set(first.values())) > 1


async def test_demo_runs_plain_and_resumes_its_job(backend: str) -> None:
    """The demo settles every restaurant, prints plain lines off a terminal, and resumes."""
    count = batch(backend, memory=6, sql=3)
    storage = new_storage()
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    summary = await run_demo(
        storage=storage, restaurants=count, time_scale=0.001, latency=0.001, console=console
    )
    assert summary.completed + summary.failed == count
    assert not summary.resumed
    assert "summary" in out.getvalue() and "in_progress" in out.getvalue()
    # A memory storage lives in this process only; a SQL one is opened afresh.
    second = storage if backend == "memory" else new_storage()
    again = await run_demo(storage=second, restaurants=count, time_scale=0.001, console=console)
    assert again.resumed and again.job_id == summary.job_id


async def test_demo_live_view_on_a_terminal() -> None:
    """On a terminal the demo draws the live table with the sub-step phases."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    summary = await run_demo(restaurants=3, time_scale=0.001, latency=0.001, console=console)
    assert summary.restaurants == 3
    assert "Account Setup: sub-steps by phase" in out.getvalue()
