"""Whole-pipeline runs on every storage backend with the fake services."""

from __future__ import annotations

import pytest

from stepflow import ItemStatus
from stepflow_registration import SUBSTEP_METHODS, FailureRates, FakeServices

from .conftest import Answers, batch, by_key, drive, running, start

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("backend")]
METHOD_OF = SUBSTEP_METHODS


async def test_every_restaurant_settles_under_injected_failures(backend: str) -> None:
    """With realistic failures and one operator retry, every restaurant ends in a final state."""
    count = batch(backend, memory=12, sql=6)  # 6 still meets a permanent failure (seed 3)
    fakes = FakeServices(seed=3, latency=0.001, failures=FailureRates.realistic(0.1))
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, count)
        snapshot = await drive(orch, job_id, Answers(), retry=True)
    assert snapshot.job.status.value in ("completed", "failed")
    assert snapshot.totals["open"] == 0
    assert snapshot.totals["finished"] + snapshot.totals["failed"] == count
    assert sum(fakes.injected.values()) > 0


async def test_no_candidates_waits_for_a_person_then_searches_again() -> None:
    """An empty search asks a person; edited terms search again and the restaurant moves on."""
    fakes = FakeServices(no_candidates={"r001"})
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 2)
        await orch.wait(job_id, timeout=10)
        waiting = (await by_key(orch, job_id, "contact_search"))["r001"]
        assert waiting.status is ItemStatus.AWAITING_INPUT
        assert waiting.reason is not None and waiting.reason.startswith("no candidates")
        snapshot = await drive(orch, job_id)
        searched = (await by_key(orch, job_id, "contact_search"))["r001"]
    assert searched.output["source"] == "search"
    assert searched.output["query"]["name"].endswith(" Ltd")
    assert snapshot.totals["finished"] == 2


async def test_candidates_are_merged_by_company_number(backend: str) -> None:
    """Name and address searches are merged, de-duplicated and filtered to registered ones."""
    fakes = FakeServices(seed=5)
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, batch(backend, memory=6, sql=3))
        await drive(orch, job_id)
        found = await by_key(orch, job_id, "contact_search")
    for item in found.values():
        numbers = [c["company_number"] for c in item.output["candidates"]]
        assert len(numbers) == len(set(numbers)) >= 2
        assert {c["match"] for c in item.output["candidates"]} == {"name", "address"}
        assert all(c["status"] == "REGISTERED" for c in item.output["candidates"])


async def test_manual_entry_skips_selection_and_details() -> None:
    """Company details entered by hand are the chosen result; steps 3 and 4 skip by condition."""
    fakes = FakeServices(no_candidates={"r001"})
    manual = {"manual": {"company_name": "Hand Entered Limited"}}
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 1)
        snapshot = await drive(orch, job_id, Answers(searches={"r001": manual}))
        search = (await by_key(orch, job_id, "contact_search"))["r001"]
        selection = (await by_key(orch, job_id, "company_selection"))["r001"]
        details = (await by_key(orch, job_id, "company_details"))["r001"]
    assert search.output["chosen"]["company_name"] == "Hand Entered Limited"
    assert selection.status is ItemStatus.SKIPPED and "source" in (selection.reason or "")
    assert details.status is ItemStatus.SKIPPED
    assert not fakes.calls_of("company_details")
    assert snapshot.totals["finished"] == 1


async def test_no_match_skips_company_details() -> None:
    """Choosing "no match" skips step 4 with the condition as reason and never fetches details."""
    fakes = FakeServices()
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 2)
        snapshot = await drive(orch, job_id, Answers(choices={"r001": {"no_match": True}}))
        details = await by_key(orch, job_id, "company_details")
    assert details["r001"].status is ItemStatus.SKIPPED
    assert details["r001"].reason == (
        "condition not met: outputs.company_selection.no_match not_equals True"
    )
    assert details["r002"].status is ItemStatus.PASSED
    assert [c.restaurant for c in fakes.calls_of("company_details")] == ["r002"]
    assert snapshot.totals["finished"] == 2


async def test_substep_order_respects_dependencies(backend: str) -> None:
    """No sub-step call starts before every call of its dependencies has ended."""
    count = batch(backend, memory=3, sql=2)
    fakes = FakeServices(latency=0.002)
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, count)
        await drive(orch, job_id)
    step = pipeline.step("account_setup")
    for restaurant in (f"r{n:03d}" for n in range(1, count + 1)):
        for sub in step.substeps:
            (call,) = fakes.calls_of(METHOD_OF[sub.key], restaurant)
            for dep in sub.depends_on:
                (before,) = fakes.calls_of(METHOD_OF[dep], restaurant)
                assert before.end <= call.start, (restaurant, dep, sub.key)
