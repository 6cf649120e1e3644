"""The lead scrape example (examples/lead_scrape) run on a fake clock.

The example is loaded from its file path, so plain ``pytest`` from the repository root
finds it without ``examples`` being importable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stepflow import ItemStatus, JobStatus, Orchestrator, Snapshot, StepStatus
from stepflow.testing import FakeClock, MemoryStorage

pytestmark = pytest.mark.anyio

APP_PATH = Path(__file__).resolve().parent.parent / "examples" / "lead_scrape" / "app.py"


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lead_scrape_example_app", APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


app = _load_app()
SCAN, STORE, GOOGLE, ORDERING = app.STEP_KEYS
BUSY = (StepStatus.IN_PROGRESS, StepStatus.RETRYING)
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
TICK = 1.0  # fake seconds per step of the clock


class Run:
    """An orchestrator on a fake clock with the example's pipeline bound to a fake API."""

    def __init__(self, orch: Orchestrator, clock: FakeClock, scraper: Any) -> None:
        self.orch = orch
        self.clock = clock
        self.scraper = scraper

    async def settle(self, job_id: str) -> Snapshot:
        """Move the fake clock until nothing runs (what ``orch.wait`` does on real time)."""
        with anyio.fail_after(30):
            while True:
                for _ in range(50):  # let woken tasks run first: the check below then
                    await anyio.lowlevel.checkpoint()  # rarely needs its 0.1 s nap
                await anyio.wait_all_tasks_blocked()
                snap = await self.orch.snapshot(job_id)
                if snap.job.status in FINAL or not any(s.status in BUSY for s in snap.steps):
                    return snap
                self.clock.advance(TICK)

    async def start(self, pages: int = 3, **kwargs: Any) -> str:
        job = await self.orch.create_job("lead_scrape", app.page_items(pages), **kwargs)
        return job.id

    async def items(self, job_id: str, step: str, status: str | None = None) -> list[Any]:
        return list((await self.orch.list_items(job_id, step, status=status, limit=1000)).items)

    async def leads(self, job_id: str, step: str, status: str | None = None) -> list[Any]:
        return [i for i in await self.items(job_id, step, status) if "store_link" in i.data]


@asynccontextmanager
async def running(
    *, seed: int = 7, failures: Any = None, stores_per_page: int = 8
) -> AsyncIterator[Run]:
    clock = FakeClock()
    scraper = app.FakeScraper(
        seed=seed,
        clock=clock,
        latency=0.5,
        stores_per_page=stores_per_page,
        failures=failures if failures is not None else app.FailureRates.none(),
    )
    async with Orchestrator(
        MemoryStorage(clock),
        handlers=app.bind(scraper),
        pipelines=[app.load_pipeline()],
        clock=clock,
    ) as orch:
        yield Run(orch, clock, scraper)


def by_step(snap: Snapshot) -> dict[str, Any]:
    return {view.key: view for view in snap.steps}


def expected_leads(scraper: Any, pages: int) -> list[str]:
    """Store links a correct scan keeps: store pages, no chains, each link once."""
    links: list[str] = []
    for page in range(1, pages + 1):
        for entry in scraper.listing(page):
            link = entry["store_link"]
            chain = entry["restaurant_name"].lower() in app.NON_ICP
            if "/store/" in link and not chain and link not in links:
                links.append(link)
    return links


async def test_definition_shares_one_rate_limit_and_scales_by_window() -> None:
    """All four steps share the key scraping_api at 10 per 60 s; --window scales it and retries."""
    real, fast = app.load_pipeline(), app.load_pipeline(1.0)
    assert [s.key for s in real.steps] == list(app.STEP_KEYS)
    assert {
        (s.rate_limit.calls, s.rate_limit.per_seconds, s.rate_limit.key) for s in real.steps
    } == {(10, 60.0, "scraping_api")}
    assert {s.rate_limit.per_seconds for s in fast.steps} == {1.0}
    assert {s.retry.initial_delay for s in fast.steps} == {2 / 60}
    assert real.steps[0].expands and all(s.advance == "manual" for s in real.steps)
    assert all(s.type == "action_required" and s.handler for s in real.steps[1:])


async def test_step_one_turns_pages_into_unique_leads() -> None:
    """Each page expands into its kept leads; duplicates, chains and non-store links are dropped."""
    async with running() as run:
        job_id = await run.start(pages=3)
        snap = await run.settle(job_id)
        pages = [i for i in await run.items(job_id, SCAN) if "page" in i.data]
        leads = await run.leads(job_id, SCAN)
    links = [lead.data["store_link"] for lead in leads]
    assert sorted(links) == sorted(expected_leads(run.scraper, 3))
    assert len(set(links)) == len(links) == len({lead.key for lead in leads})
    assert all(lead.status is ItemStatus.PROCESSED for lead in leads)
    assert [p.status for p in pages] == [ItemStatus.CANCELLED] * 3
    assert all(p.reason == f"expanded into {p.output['leads']} items" for p in pages)
    assert sum(p.output.get("duplicates", 0) for p in pages) >= 2  # page 1's sponsored store
    steps = by_step(snap)
    assert steps[SCAN].status is StepStatus.ACTION_REQUIRED
    assert steps[SCAN].received == 3 + len(leads)
    assert [steps[k].received for k in (STORE, GOOGLE, ORDERING)] == [0, 0, 0]
    assert {c.method for c in run.scraper.calls} == {"scan_category"}


async def test_pages_with_no_new_lead_are_discarded_not_passed_as_leads() -> None:
    """A page that emits nothing stays processed at step 1; the person discards it."""
    async with running(stores_per_page=0) as run:
        job_id = await run.start(pages=2)
        report = await app.run_person(run.orch, job_id, run.settle)
    steps = by_step(report.snapshot)
    assert report.passed == {} and report.discarded == {SCAN: 2}
    assert steps[SCAN].counts == {ItemStatus.CANCELLED: 2}
    assert [steps[k].received for k in (STORE, GOOGLE, ORDERING)] == [0, 0, 0]
    assert report.snapshot.job.status is JobStatus.FAILED  # no lead reached the end


async def test_passing_moves_counts_exactly_and_later_steps_run_only_what_was_passed() -> None:
    """Passing n leads adds n to `passed` here and `received` there; only those are scraped."""
    async with running() as run:
        job_id = await run.start(pages=2)
        await run.settle(job_id)
        leads = await run.leads(job_id, SCAN)
        chosen = leads[:5]
        await run.orch.pass_items(job_id, SCAN, [i.id for i in chosen])
        snap = by_step(await run.settle(job_id))
        assert snap[SCAN].counts[ItemStatus.PASSED] == 5
        assert snap[SCAN].counts[ItemStatus.PROCESSED] == len(leads) - 5
        assert snap[STORE].received == 5
        assert snap[STORE].counts == {ItemStatus.PROCESSED: 5}
        scraped = {c.target for c in run.scraper.calls_of("scrape_store")}
        assert scraped == {i.data["store_link"] for i in chosen}

        enriched = await run.leads(job_id, STORE, "processed")
        await run.orch.pass_items(job_id, STORE, [i.id for i in enriched[:3]])
        snap = by_step(await run.settle(job_id))
        assert snap[STORE].counts == {ItemStatus.PASSED: 3, ItemStatus.PROCESSED: 2}
        assert snap[GOOGLE].received == 3
        assert snap[GOOGLE].counts == {ItemStatus.PROCESSED: 3}
        assert snap[ORDERING].received == 0
        looked_up = {c.target for c in run.scraper.calls_of("google_lookup")}
        assert looked_up == {i.data["restaurant_name"] for i in enriched[:3]}
        assert not run.scraper.calls_of("find_ordering_links")


async def test_without_auto_process_a_passed_step_waits_until_started() -> None:
    """With auto_process off, passed leads wait `available` until start_next starts the step."""
    async with running() as run:
        job_id = await run.start(pages=1, auto_process=False)
        await run.orch.process_step(job_id, SCAN)
        await run.settle(job_id)
        leads = await run.leads(job_id, SCAN)
        await run.orch.pass_items(job_id, SCAN, [leads[0].id])
        snap = by_step(await run.settle(job_id))
        assert snap[STORE].counts == {ItemStatus.AVAILABLE: 1}
        assert not run.scraper.calls_of("scrape_store")
        await run.orch.pass_items(job_id, SCAN, [leads[1].id], start_next=True)
        snap = by_step(await run.settle(job_id))
        assert snap[STORE].counts == {ItemStatus.PROCESSED: 2}
        assert len(run.scraper.calls_of("scrape_store")) == 2


async def test_failed_lead_retried_goes_back_and_finishes() -> None:
    """A lead that used up its attempts fails; a retry makes it available, and it finishes."""
    async with running() as run:
        job_id = await run.start(pages=1)
        await run.settle(job_id)
        leads = await run.leads(job_id, SCAN)
        flaky, bad = leads[0], leads[1]
        run.scraper.script("scrape_store", flaky.data["store_link"], *["transient"] * 3)
        run.scraper.script("google_lookup", bad.data["restaurant_name"], "bad_data", "bad_data")
        await run.orch.pass_items(job_id, SCAN, [i.id for i in leads])
        snap = by_step(await run.settle(job_id))
        assert snap[STORE].counts[ItemStatus.FAILED] == 1
        [failed] = await run.leads(job_id, STORE, "failed")
        assert failed.id == flaky.id and failed.attempts == 3
        assert failed.error["kind"] == "transient"

        await run.orch.retry_items(job_id, STORE, [flaky.id])
        snap = by_step(await run.settle(job_id))
        assert ItemStatus.FAILED not in snap[STORE].counts
        assert snap[STORE].counts[ItemStatus.PROCESSED] == len(leads)
        assert len(run.scraper.calls_of("scrape_store", flaky.data["store_link"])) == 4

        await run.orch.pass_items(job_id, STORE)
        await run.settle(job_id)
        [rejected] = await run.leads(job_id, GOOGLE, "failed")
        assert rejected.id == bad.id and rejected.attempts == 1  # invalid data is not retried
        assert "is not a NZ/AU number" in rejected.error["message"]
        await run.orch.retry_items(job_id, GOOGLE)
        await run.settle(job_id)
        [still] = await run.leads(job_id, GOOGLE, "failed")
        assert still.id == bad.id and still.attempts == 2

        await run.orch.pass_items(job_id, GOOGLE)
        await run.settle(job_id)
        await run.orch.pass_items(job_id, ORDERING)
        snap = await run.settle(job_id)
        done = {i.id for i in await run.leads(job_id, ORDERING, ["passed", "skipped"])}
    assert flaky.id in done and bad.id not in done
    assert snap.job.status is JobStatus.COMPLETED
    assert snap.totals["finished"] == len(leads) - 1


async def test_whole_run_keeps_ten_calls_per_sixty_seconds_across_steps() -> None:
    """With failures and retries on, no 60 s window of the fake clock holds more than 10 calls."""
    async with running(failures=app.FailureRates()) as run:
        job_id = await run.start(pages=3)
        report = await app.run_person(run.orch, job_id, run.settle)
    calls = run.scraper.calls
    assert len({c.method for c in calls}) == 4
    assert len(calls) > 40
    assert app.busiest_window(calls, 60.0) == 10  # the limit is reached, never passed
    span = max(c.start for c in calls) - min(c.start for c in calls)
    assert span >= 60.0 * (len(calls) // 10 - 1)
    outcomes = {c.outcome for c in calls}
    assert {"ok", "transient", "bad_data"} <= outcomes
    assert report.snapshot.job.status is JobStatus.COMPLETED


async def test_simulated_person_counts_match_and_runs_are_deterministic() -> None:
    """The person passes every processed lead; counters add up; the same seed gives the same run."""
    results = []
    for _ in range(2):
        async with running(failures=app.FailureRates(), seed=11) as run:
            job_id = await run.start(pages=2)
            report = await app.run_person(run.orch, job_id, run.settle)
        results.append(
            (
                app.summary_rows(report.snapshot),
                [(c.method, c.target, c.outcome) for c in run.scraper.calls],
            )
        )
        steps = by_step(report.snapshot)
        for before, after in zip(app.STEP_KEYS, app.STEP_KEYS[1:], strict=False):
            passed = steps[before].counts.get(ItemStatus.PASSED, 0)
            assert passed == report.passed.get(before, 0) == steps[after].received
        last = steps[ORDERING].counts
        assert report.snapshot.totals["finished"] == last.get(ItemStatus.PASSED, 0) + last.get(
            ItemStatus.SKIPPED, 0
        )
        assert not any(
            steps[k].counts.get(s)
            for k in app.STEP_KEYS
            for s in (ItemStatus.PROCESSED, ItemStatus.AVAILABLE)
        )
    assert results[0] == results[1]


async def test_main_prints_a_summary_table() -> None:
    """`main()` runs one page end to end on a tiny window and prints the per-step table."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await anyio.to_thread.run_sync(
            app.main, ["--window", "0.02", "--pages", "1", "--latency", "0"]
        )
    text = out.getvalue()
    assert code == 0
    assert "step" in text and "received" in text and "Ordering Platform Discovery" in text
    assert "job completed" in text
