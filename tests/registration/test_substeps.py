"""Account-setup sub-steps: conditions, blocking, failures, resume, marks and resets."""

from __future__ import annotations

from typing import Any

import pytest

from stepflow import Conflict, ItemStatus
from stepflow_registration import SUBSTEP_METHODS, FakeServices

from .conftest import Answers, by_key, drive, running, start

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("backend")]
CFG = "outputs.account_setup_configuration"
NOT_MET = "condition not met: "


def _states(item: Any) -> dict[str, tuple[str, str | None]]:
    return {k: (s["status"], s["reason"]) for k, s in item.substeps.items()}


async def test_each_run_condition_skips_with_its_reason() -> None:
    """Every run condition, when it does not hold, skips its sub-step and says why."""
    keys = list(SUBSTEP_METHODS)
    configs: dict[str, dict[str, Any]] = {
        f"r{n + 1:03d}": {"steps_enabled": {key: False}} for n, key in enumerate(keys)
    }
    extra = {
        "r013": {"account": {"registerNewUser": False}},
        "r014": {"onboarding": {"createOnboardingUser": False}},
        "r015": {"onboarding": {"syncOnboardingRecord": False}},
        "r016": {"menu": {"uploadImages": False, "addOptionSets": False, "addItemTags": False}},
        "r017": {"menu": {"selectedMenuId": None}},
        "r018": {},  # code generation produces no id
    }
    configs.update(extra)
    fakes = FakeServices()
    fakes.set_output("generate_code_injections", "r018", {"ok": True})
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, len(configs))
        await drive(orch, job_id, Answers(configs=configs))
        items = {k: _states(v) for k, v in (await by_key(orch, job_id, "account_setup")).items()}
    for n, key in enumerate(keys):
        status, reason = items[f"r{n + 1:03d}"][key]
        assert (status, reason) == ("skipped", f"{NOT_MET}{CFG}.steps_enabled.{key} not_false")
    assert items["r013"]["cloudwaitressAccount"] == (
        "skipped",
        f"{NOT_MET}{CFG}.account.registerNewUser not_false",
    )
    assert items["r014"]["createOnboardingUser"] == (
        "skipped",
        f"{NOT_MET}{CFG}.onboarding.createOnboardingUser truthy",
    )
    assert items["r014"]["syncOnboardingUser"] == (
        "skipped",
        "dependency createOnboardingUser skipped",
    )
    assert items["r015"]["syncOnboardingUser"] == (
        "skipped",
        f"{NOT_MET}{CFG}.onboarding.syncOnboardingRecord truthy",
    )
    for key, field in (
        ("uploadImages", "uploadImages"),
        ("optionSets", "addOptionSets"),
        ("itemTags", "addItemTags"),
    ):
        assert items["r016"][key] == ("skipped", f"{NOT_MET}{CFG}.menu.{field} truthy")
    assert items["r017"]["menuImport"] == ("skipped", f"{NOT_MET}{CFG}.menu.selectedMenuId truthy")
    assert items["r017"]["uploadImages"][1] == f"{NOT_MET}{CFG}.menu.selectedMenuId truthy"
    assert items["r017"]["optionSets"] == ("skipped", "dependency menuImport skipped")
    assert items["r018"]["websiteConfig"] == (
        "skipped",
        f"{NOT_MET}substeps.codeGeneration.codeInjectionId truthy",
    )
    assert items["r018"]["servicesConfig"][0] == "completed"


async def test_blocking_failure_stops_that_restaurant_only() -> None:
    """A failed blocking sub-step fails its restaurant and starts nothing after it."""
    fakes = FakeServices()
    fakes.script("register_restaurant", "r001", "permanent")
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 3)
        snapshot = await drive(orch, job_id)
        items = await by_key(orch, job_id, "account_setup")
    failed = items["r001"]
    assert failed.status is ItemStatus.FAILED
    assert "stopped by blocking sub-step restaurantRegistration" in failed.error["message"]  # type: ignore[index]
    assert _states(failed)["restaurantRegistration"][0] == "failed"
    after = pipeline.step("account_setup").dependents("restaurantRegistration")
    for key in after:
        assert _states(failed)[key][0] in ("pending", "skipped")
        assert not fakes.calls_of(SUBSTEP_METHODS[key], "r001")
    assert {items["r002"].status, items["r003"].status} == {ItemStatus.PASSED}
    assert snapshot.totals == {"items": 3, "finished": 2, "failed": 1, "cancelled": 0, "open": 0}


async def test_non_blocking_failure_lets_siblings_run_and_fails_the_item() -> None:
    """A failed non-blocking sub-step leaves its siblings running; the restaurant ends failed."""
    fakes = FakeServices()
    fakes.script("configure_services", "r001", "permanent")
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 2)
        await drive(orch, job_id)
        items = await by_key(orch, job_id, "account_setup")
    states = _states(items["r001"])
    assert states["servicesConfig"][0] == "failed"
    done = [k for k, (status, _) in states.items() if status == "completed"]
    assert sorted(done) == sorted(k for k in SUBSTEP_METHODS if k != "servicesConfig")
    assert items["r001"].status is ItemStatus.FAILED
    assert items["r001"].error["failed"] == ["servicesConfig"]  # type: ignore[index]
    assert items["r002"].status is ItemStatus.PASSED


async def test_transient_failures_are_retried_by_the_policy() -> None:
    """A 5xx, a 429 and a timeout are retried within the sub-step's three attempts."""
    fakes = FakeServices()
    fakes.script("import_menu", "r001", "unavailable", "rate_limited")
    fakes.script("configure_payment", "r001", "timeout")
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 1)
        await drive(orch, job_id)
        item = (await by_key(orch, job_id, "account_setup"))["r001"]
    assert item.status is ItemStatus.PASSED
    assert item.substeps["menuImport"]["attempts"] == 3
    assert item.substeps["paymentConfig"]["attempts"] == 2
    assert [c.outcome for c in fakes.calls_of("import_menu")] == [
        "unavailable",
        "rate_limited",
        "ok",
    ]


async def test_retry_resumes_only_what_did_not_complete() -> None:
    """Retrying a failed restaurant runs the failed sub-step again and nothing that completed."""
    fakes = FakeServices()
    fakes.script("configure_services", "r001", "permanent")
    fakes.script("register_restaurant", "r002", "permanent")
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 2)
        await drive(orch, job_id)
        await orch.retry_items(job_id, "account_setup")
        snapshot = await drive(orch, job_id)
    assert snapshot.totals["finished"] == 2
    again = {("r001", "configure_services"), ("r002", "register_restaurant")}
    for restaurant in ("r001", "r002"):
        for method in SUBSTEP_METHODS.values():
            runs = len(fakes.calls_of(method, restaurant))
            assert runs == (2 if (restaurant, method) in again else 1), (restaurant, method)


async def test_marking_and_resetting_obey_the_dependency_rule() -> None:
    """Completed/skipped marks need finished dependencies; a reset takes its dependents along."""
    fakes = FakeServices()
    fakes.script("register_restaurant", "r001", "permanent")
    async with running(fakes) as (orch, pipeline):
        job_id = await start(orch, pipeline, 1)
        await drive(orch, job_id)
        item_id = (await by_key(orch, job_id, "account_setup"))["r001"].id
        with pytest.raises(Conflict, match="restaurantRegistration"):
            await orch.mark_substep(job_id, "account_setup", item_id, "websiteConfig", "completed")
        with pytest.raises(Conflict, match="restaurantRegistration"):
            await orch.mark_substep(job_id, "account_setup", item_id, "menuImport", "skipped")
        await orch.mark_substep(job_id, "account_setup", item_id, "servicesConfig", "failed")
        await orch.mark_substep(
            job_id, "account_setup", item_id, "restaurantRegistration", "completed"
        )
        await orch.mark_substep(job_id, "account_setup", item_id, "websiteConfig", "completed")
        await orch.reset_substep(job_id, "account_setup", item_id, "restaurantRegistration")
        states = _states((await by_key(orch, job_id, "account_setup"))["r001"])
        assert states["restaurantRegistration"][0] == "pending"
        assert states["websiteConfig"][0] == "pending"
        assert states["servicesConfig"][0] == "pending"
        assert states["codeGeneration"][0] == "completed"
        await orch.retry_items(job_id, "account_setup", [item_id])
        snapshot = await drive(orch, job_id)
    assert snapshot.totals["finished"] == 1
    assert len(fakes.calls_of("register_restaurant", "r001")) == 2
    assert len(fakes.calls_of("register_account", "r001")) == 1
    assert len(fakes.calls_of("generate_code_injections", "r001")) == 1
