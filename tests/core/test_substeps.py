"""Sub-steps: the dependency graph as schedule, blocking, resume, marks and resets."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stepflow import Conflict, ItemStatus, JobStatus, PermanentError, SubStepStatus, TransientError

from .kit import handlers, pipeline, running

pytestmark = pytest.mark.anyio

GRAPH = pipeline(
    {
        "key": "setup",
        "retry": {"max_attempts": 2, "initial_delay": 0},
        "substeps": [
            {"key": "account", "blocking": True, "phase": 1},
            {"key": "code", "phase": 1},
            {"key": "register", "depends_on": ["account"], "blocking": True, "phase": 2},
            {
                "key": "website",
                "depends_on": ["code", "register"],
                "phase": 2,
                "run_if": ["substeps.code.id"],
            },
            {"key": "menu", "depends_on": ["register"], "phase": 2, "run_if": ["item.menu"]},
            {"key": "tags", "depends_on": ["menu"], "phase": 3},
        ],
    }
)
KEYS = ["account", "code", "register", "website", "menu", "tags"]


class Services:
    """Sub-step handlers that log their calls and fail on demand."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []  # (event, item key, sub-step)
        self.fail: dict[tuple[str, str], type[Exception]] = {}
        self.started: dict[str, anyio.Event] = {k: anyio.Event() for k in KEYS}
        self.wait_for: dict[str, str] = {}  # sub-step -> sub-step that must start first

    def registry(self) -> Any:
        def make(key: str) -> Any:
            async def run(ctx: Any) -> dict[str, Any]:
                self.log.append(("start", ctx.item_key, key))
                self.started[key].set()
                if key in self.wait_for:
                    with anyio.fail_after(5):  # only ends if the other one runs meanwhile
                        await self.started[self.wait_for[key]].wait()
                await anyio.lowlevel.checkpoint()
                error = self.fail.get((ctx.item_key, key))
                if error is not None:
                    self.log.append(("fail", ctx.item_key, key))
                    raise error(f"{key} failed")
                self.log.append(("end", ctx.item_key, key))
                return {"id": f"{key}-{ctx.item_key}"}

            return run

        return handlers(**{key: make(key) for key in KEYS})

    def runs(self, item: str, key: str) -> int:
        return sum(1 for e in self.log if e == ("start", item, key))


def one(menu: bool = True) -> list[dict[str, Any]]:
    return [{"key": "r1", "data": {"menu": menu}}]


async def substeps_of(orch: Any, job_id: str) -> dict[str, dict[str, Any]]:
    [item] = (await orch.list_items(job_id, "setup")).items
    return item.substeps


async def test_dependencies_are_the_schedule() -> None:
    """A sub-step starts only after its dependencies ended; independent ones overlap."""
    services = Services()
    services.wait_for["account"] = "code"  # account finishes only once code has started
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", one())
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    order = [(e, k) for e, _, k in services.log]
    for key, deps in {
        "register": ["account"],
        "website": ["code", "register"],
        "menu": ["register"],
        "tags": ["menu"],
    }.items():
        for dep in deps:
            assert order.index(("end", dep)) < order.index(("start", key))
    assert order.index(("start", "code")) < order.index(("end", "account"))


async def test_run_conditions_skip_with_reason_and_dependents_follow() -> None:
    """A false run_if skips the sub-step with its reason; its dependents skip naming it."""
    services = Services()
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", one(menu=False))
        snap = await orch.wait(job.id, timeout=5)
        states = await substeps_of(orch, job.id)
    assert snap.job.status is JobStatus.COMPLETED
    assert states["menu"]["status"] == "skipped"
    assert states["menu"]["reason"] == "condition not met: item.menu truthy"
    assert states["tags"]["status"] == "skipped"
    assert states["tags"]["reason"] == "dependency menu skipped"
    assert services.runs("r1", "tags") == 0


async def test_blocking_failure_stops_the_item_and_keeps_progress() -> None:
    """A failed blocking sub-step stops its item's run; what ran keeps its status."""
    services = Services()
    services.fail[("r1", "account")] = PermanentError
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", [*one(), {"key": "r2", "data": {"menu": True}}])
        snap = await orch.wait(job.id, timeout=5)
        page = await orch.list_items(job.id, "setup")
    r1, r2 = page.items
    assert r1.status is ItemStatus.FAILED
    assert r1.error is not None and "account" in r1.error["failed"]
    assert r1.substeps["code"]["status"] == "completed"
    assert r1.substeps["register"]["status"] == "skipped"
    assert services.runs("r1", "register") == 0
    assert r2.status is ItemStatus.PASSED
    assert snap.job.status is JobStatus.COMPLETED


async def test_non_blocking_failure_lets_siblings_finish_and_fails_the_item() -> None:
    """A failed non-blocking sub-step does not stop siblings; the item ends failed."""
    services = Services()
    services.fail[("r1", "code")] = PermanentError
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", one())
        snap = await orch.wait(job.id, timeout=5)
        states = await substeps_of(orch, job.id)
    assert snap.job.status is JobStatus.FAILED
    assert states["code"]["status"] == "failed"
    assert states["website"]["status"] == "skipped"
    assert states["website"]["reason"] == "dependency code failed"
    for key in ("account", "register", "menu", "tags"):
        assert states[key]["status"] == "completed"


async def test_retry_resumes_only_what_did_not_complete() -> None:
    """After a failure, retry runs the failed sub-step and its skipped dependents only."""
    services = Services()
    services.fail[("r1", "code")] = PermanentError
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", one())
        await orch.wait(job.id, timeout=5)
        del services.fail[("r1", "code")]
        await orch.retry_items(job.id, "setup")
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert services.runs("r1", "code") == 2
    assert services.runs("r1", "website") == 1
    for key in ("account", "register", "menu", "tags"):
        assert services.runs("r1", key) == 1


async def test_sub_steps_retry_by_their_policy() -> None:
    """A transient sub-step failure retries within the run and then succeeds."""
    services = Services()
    services.fail[("r1", "tags")] = TransientError
    calls = 0
    registry = services.registry()
    original, _ = registry.get("tags")

    async def flaky(ctx: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            services.fail.pop(("r1", "tags"), None)
        return await original(ctx)

    registry.add("tags", flaky)
    async with running(GRAPH, registry=registry) as orch:
        job = await orch.create_job("p", one())
        snap = await orch.wait(job.id, timeout=5)
        states = await substeps_of(orch, job.id)
    assert snap.job.status is JobStatus.COMPLETED
    assert states["tags"]["attempts"] == 2


async def test_marks_need_dependencies_done_and_resets_take_dependents() -> None:
    """completed/skipped marks need finished dependencies; a reset cascades to dependents."""
    services = Services()
    services.fail[("r1", "account")] = PermanentError
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", one())
        await orch.wait(job.id, timeout=5)
        [item] = (await orch.list_items(job.id, "setup")).items
        with pytest.raises(Conflict, match="dependencies account are not completed"):
            await orch.mark_substep(job.id, "setup", item.id, "register", "completed")
        await orch.mark_substep(job.id, "setup", item.id, "register", "failed")
        await orch.mark_substep(
            job.id, "setup", item.id, "account", "completed", reason="created by hand"
        )
        await orch.mark_substep(job.id, "setup", item.id, "register", "completed")
        states = await substeps_of(orch, job.id)
        assert states["account"] == {
            **states["account"],
            "status": "completed",
            "reason": "created by hand",
            "cause": "manual",
        }
        await orch.reset_substep(job.id, "setup", item.id, "account")
        states = await substeps_of(orch, job.id)
        assert {k: states[k]["status"] for k in ("account", "register", "website", "menu")} == {
            "account": "pending",
            "register": "pending",
            "website": "pending",
            "menu": "pending",
        }
        assert states["code"]["status"] == "completed"
        del services.fail[("r1", "account")]
        await orch.retry_items(job.id, "setup")
        snap = await orch.wait(job.id, timeout=5)
    assert snap.job.status is JobStatus.COMPLETED
    assert services.runs("r1", "code") == 1
    assert services.runs("r1", "account") == 2


async def test_snapshot_shows_sub_step_progress_by_phase() -> None:
    """The snapshot groups sub-step counts into display phases with a phase status."""
    services = Services()
    services.fail[("r2", "code")] = PermanentError
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", [*one(), {"key": "r2", "data": {"menu": False}}])
        snap = await orch.wait(job.id, timeout=5)
    phases = snap.steps[0].phases
    assert [p.phase for p in phases] == [1, 2, 3]
    assert phases[0].status is SubStepStatus.FAILED
    code = next(s for s in phases[0].substeps if s.key == "code")
    assert code.counts == {SubStepStatus.COMPLETED: 1, SubStepStatus.FAILED: 1}
    assert phases[2].status is SubStepStatus.COMPLETED
    assert phases[2].substeps[0].counts == {SubStepStatus.COMPLETED: 1, SubStepStatus.SKIPPED: 1}


async def test_a_sub_step_can_run_after_a_skipped_dependency_when_declared() -> None:
    """when_dependency_skipped: run lets a sub-step go on past a skipped (not failed) one."""
    p = pipeline(
        {
            "key": "setup",
            "substeps": [
                {"key": "account", "run_if": ["item.new_account"]},
                {"key": "register", "depends_on": ["account"], "when_dependency_skipped": "run"},
                {"key": "menu", "depends_on": ["account"]},
            ],
        }
    )
    services = Services()
    async with running(p, registry=services.registry()) as orch:
        job = await orch.create_job("p", [{"key": "r1", "data": {"new_account": False}}])
        await orch.wait(job.id, timeout=5)
        states = await substeps_of(orch, job.id)
    assert states["account"]["status"] == "skipped"
    assert states["register"]["status"] == "completed"
    assert states["menu"]["status"] == "skipped"
    assert states["menu"]["reason"] == "dependency account skipped"


async def test_sub_steps_stopped_by_a_blocking_failure_say_so() -> None:
    """Sub-steps never started after a blocking failure end skipped, naming the blocker."""
    services = Services()
    services.fail[("r1", "account")] = PermanentError
    async with running(GRAPH, registry=services.registry()) as orch:
        job = await orch.create_job("p", one())
        snap = await orch.wait(job.id, timeout=5)
        states = await substeps_of(orch, job.id)
    assert states["register"] == {
        **states["register"],
        "status": "skipped",
        "cause": "blocked",
        "reason": "stopped: blocking sub-step account failed",
    }
    assert snap.steps[0].phases[1].status is SubStepStatus.COMPLETED
