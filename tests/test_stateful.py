"""The stateful machine of stepflow.testing, run on three shapes of pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis.stateful import run_state_machine_as_test
from pydantic import BaseModel

from stepflow import (
    HandlerContext,
    Handlers,
    PermanentError,
    Pipeline,
    Step,
    SyncOrchestrator,
    TransientError,
)
from stepflow.testing import FakeClock, MemoryStorage, pipeline_machine

FAST_RETRY = {"max_attempts": 3, "initial_delay": 0.5, "multiplier": 2.0, "max_delay": 2.0}

AUTOMATIC = Pipeline.load(
    {
        "name": "three-automatic",
        "steps": [
            {"key": "fetch", "handler": "fetch", "retry": FAST_RETRY},
            {"key": "enrich", "handler": "enrich", "retry": FAST_RETRY, "concurrency": 2},
            {"key": "store", "handler": "store", "retry": {**FAST_RETRY, "max_attempts": 2}},
        ],
    }
)

PEOPLE = Pipeline.load(
    {
        "name": "with-people",
        "steps": [
            {"key": "search", "handler": "search", "retry": FAST_RETRY},
            {"key": "choose", "type": "action_required", "action": "pick"},
            {"key": "review", "type": "action_required", "advance": "manual"},
            {
                "key": "extract",
                "handler": "extract",
                "retry": FAST_RETRY,
                "run_if": [{"path": "outputs.choose.company", "test": "not_equals", "value": ""}],
            },
        ],
    }
)

SUBSTEPS = Pipeline.load(
    {
        "name": "with-substeps",
        "steps": [
            {"key": "configure", "handler": "configure", "advance": "manual"},
            {
                "key": "setup",
                "retry": FAST_RETRY,
                "substeps": [
                    {"key": "account", "blocking": True},
                    {"key": "code", "retry": {**FAST_RETRY, "max_attempts": 2}},
                    {"key": "images", "run_if": ["item.images"]},
                    {"key": "register", "depends_on": ["account"], "blocking": True},
                    {
                        "key": "website",
                        "depends_on": ["code", "register"],
                        "run_if": [{"path": "substeps.code.site", "test": "truthy"}],
                    },
                    {"key": "menu", "depends_on": ["register"]},
                ],
            },
            {
                "key": "notify",
                "handler": "notify",
                "run_if": [{"path": "item.quiet", "test": "falsy"}],
            },
        ],
    }
)


class Pick(BaseModel):
    """The payload of the company selection in the PEOPLE pipeline."""

    company: str


def pick_payload(step: Step, item_key: str) -> dict[str, Any]:
    return {"company": "" if item_key.endswith("0") else f"company of {item_key}"}


@pytest.mark.slow
def test_three_automatic_steps_keep_the_invariants() -> None:
    """Random runs of a 3-step automatic pipeline with retries keep every invariant."""
    run_state_machine_as_test(pipeline_machine(AUTOMATIC, MemoryStorage))


@pytest.mark.slow
def test_people_steps_keep_the_invariants() -> None:
    """Random runs with an action step (typed payload) and a manual step keep every invariant."""
    machine = pipeline_machine(
        PEOPLE, MemoryStorage, payload_for=pick_payload, action_models={"pick": Pick}
    )
    run_state_machine_as_test(machine)


@pytest.mark.slow
def test_substeps_keep_the_invariants() -> None:
    """Random runs with dependent, blocking and conditional sub-steps keep every invariant."""
    run_state_machine_as_test(pipeline_machine(SUBSTEPS, MemoryStorage))


def test_machine_binds_every_handler_and_action_key() -> None:
    """The machine class runs a pipeline without any host handlers bound."""
    machine = pipeline_machine(PEOPLE)
    instance = machine()
    try:
        assert instance.orch.pipeline("with-people").content_hash == PEOPLE.content_hash
    finally:
        instance.teardown()


def test_cancel_while_a_substep_waits_to_retry_logs_no_engine_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cancelling a job whose sub-step sleeps before a retry leaves no engine error behind."""
    pipeline = Pipeline.load({"name": "p", "steps": [{"key": "s", "substeps": [{"key": "a"}]}]})
    handlers = Handlers()

    async def flaky(ctx: HandlerContext) -> None:
        raise TransientError("try again")

    handlers.add("a", flaky)
    clock = FakeClock()
    storage = MemoryStorage(clock)
    with SyncOrchestrator(storage, handlers=handlers, pipelines=[pipeline], clock=clock) as orch:
        job = orch.create_job("p", [{"key": "x"}])
        for event in orch.watch(job.id, until_final=False):
            if event.type == "substep.status" and event.data["to"] == "retrying":
                break
        engine = orch.orchestrator.engine
        with caplog.at_level(logging.ERROR, logger="stepflow"):
            orch.cancel_job(job.id)
            while engine.running:  # the cancelled run unwinds; bounded by the test timeout
                orch.portal.call(anyio.lowlevel.checkpoint)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("verb", ["skip_item", "pass_items"])
def test_skipping_the_last_failed_item_completes_a_failed_job(verb: str) -> None:
    """Skipping or passing the only failed item of a failed job to the end completes it."""
    pipeline = Pipeline.load({"name": "p", "steps": [{"key": "a", "handler": "a"}]})
    handlers = Handlers()

    async def fail(ctx: HandlerContext) -> None:
        raise PermanentError("no")

    handlers.add("a", fail)
    clock = FakeClock()
    storage = MemoryStorage(clock)
    with SyncOrchestrator(storage, handlers=handlers, pipelines=[pipeline], clock=clock) as orch:
        job = orch.create_job("p", [{"key": "x"}])
        assert orch.wait(job.id, timeout=5).job.status == "failed"
        item_id = orch.list_items(job.id, "a").items[0].id
        if verb == "skip_item":
            orch.skip_item(job.id, "a", item_id)
        else:
            orch.pass_items(job.id, "a", [item_id])
        assert orch.snapshot(job.id).job.status == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_machine_holds_on_sql_storages(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The sub-step pipeline keeps every invariant on SQLite and PostgreSQL (smaller profile)."""
    from hypothesis import settings

    from .backends import storage_factory

    with storage_factory(backend, tmp_path, request) as factory:
        machine = pipeline_machine(SUBSTEPS, factory)
        run_state_machine_as_test(
            machine, settings=settings(max_examples=10, stateful_step_count=15, deadline=None)
        )
