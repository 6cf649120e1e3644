"""The shipped pipeline says what the original system did, and only as data."""

from __future__ import annotations

from typing import Any

from stepflow import ErrorKind, Pipeline
from stepflow_registration import FakeServices, bind, load_pipeline, pipeline_data

EXPECTED: dict[str, tuple[tuple[str, ...], bool, int]] = {
    "cloudwaitressAccount": ((), True, 1),
    "codeGeneration": ((), False, 1),
    "createOnboardingUser": ((), False, 1),
    "uploadImages": ((), False, 1),
    "restaurantRegistration": (("cloudwaitressAccount",), True, 2),
    "websiteConfig": (("codeGeneration", "restaurantRegistration"), False, 2),
    "servicesConfig": (("restaurantRegistration",), False, 2),
    "paymentConfig": (("restaurantRegistration",), False, 2),
    "menuImport": (("restaurantRegistration",), False, 2),
    "syncOnboardingUser": (("createOnboardingUser", "restaurantRegistration"), False, 2),
    "optionSets": (("menuImport",), False, 3),
    "itemTags": (("menuImport",), False, 4),
}
CONFIG = "outputs.account_setup_configuration"


def test_steps_in_order_with_their_kinds() -> None:
    """The six steps come in the original order with the right type, handler and action."""
    pipeline = load_pipeline()
    shape = [(s.key, s.type.value, s.handler, s.action) for s in pipeline.steps]
    assert shape == [
        ("menu_branding", "automatic", None, None),
        ("contact_search", "automatic", "contact_search", "contact_search_override"),
        ("company_selection", "action_required", None, "company_choice"),
        ("company_details", "automatic", "company_details", None),
        ("account_setup_configuration", "action_required", None, "account_setup_config"),
        ("account_setup", "automatic", None, None),
    ]
    assert [s.key for s in pipeline.step("menu_branding").substeps] == [
        "menuExtraction",
        "brandingExtraction",
    ]


def test_account_setup_graph_matches_the_table() -> None:
    """The twelve sub-steps have exactly the original keys, dependencies, blocking and phases."""
    step = load_pipeline().step("account_setup")
    found = {s.key: (s.depends_on, s.blocking, s.phase) for s in step.substeps}
    assert found == EXPECTED


def test_every_substep_can_be_disabled_and_conditions_are_checks() -> None:
    """Each sub-step carries a not_false steps_enabled check plus the original conditions."""
    step = load_pipeline().step("account_setup")
    for sub in step.substeps:
        paths = {(c.path, c.test) for c in sub.run_if}
        assert (f"{CONFIG}.steps_enabled.{sub.key}", "not_false") in paths
    conditions = {s.key: {(c.path, c.test) for c in s.run_if} for s in step.substeps}
    assert (f"{CONFIG}.account.registerNewUser", "not_false") in conditions["cloudwaitressAccount"]
    assert ("substeps.codeGeneration.codeInjectionId", "truthy") in conditions["websiteConfig"]
    assert (f"{CONFIG}.menu.selectedMenuId", "truthy") in conditions["uploadImages"]
    assert (f"{CONFIG}.menu.uploadImages", "truthy") in conditions["uploadImages"]
    assert (f"{CONFIG}.menu.addOptionSets", "truthy") in conditions["optionSets"]
    assert (f"{CONFIG}.onboarding.syncOnboardingRecord", "truthy") in conditions[
        "syncOnboardingUser"
    ]


def test_retry_timeout_and_rate_limit_as_in_the_original() -> None:
    """Sub-steps retry 3 times (2 s then 4 s); timeouts 2-5 min, 60 min for 11-12; 1 account/min."""
    step = load_pipeline().step("account_setup")
    for sub in step.substeps:
        policy = sub.retry or step.retry
        assert (policy.max_attempts, policy.initial_delay, policy.multiplier) == (3, 2, 2)
        assert ErrorKind.PERMANENT not in policy.retry_on
        expected = (3600, 3600) if sub.key in ("optionSets", "itemTags") else (120, 300)
        assert sub.timeout is not None and expected[0] <= sub.timeout <= expected[1]
    limit = step.substep("cloudwaitressAccount").rate_limit
    assert limit is not None
    assert (limit.calls, limit.per_seconds, limit.key) == (1, 60, "cloudwaitress_account")


def _without_durations(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _without_durations(v)
            for k, v in data.items()
            if k not in ("timeout", "initial_delay", "max_delay", "jitter", "per_seconds")
        }
    if isinstance(data, list):
        return [_without_durations(v) for v in data]
    return data


def test_time_scale_changes_durations_only() -> None:
    """Scaling rewrites timeouts, retry waits and the rate-limit window, nothing else."""
    full, scaled = load_pipeline(), load_pipeline(time_scale=0.01)
    assert _without_durations(full.model_dump(mode="json")) == _without_durations(
        scaled.model_dump(mode="json")
    )
    sub, fast = full.step("account_setup"), scaled.step("account_setup")
    assert fast.substep("cloudwaitressAccount").rate_limit.per_seconds == 0.6  # type: ignore[union-attr]
    assert fast.substep("optionSets").timeout == 36.0
    assert fast.substep("optionSets").retry.initial_delay == 0.02  # type: ignore[union-attr]
    assert sub.substep("optionSets").timeout == 3600


def test_yaml_round_trips_and_binds() -> None:
    """The YAML loads as it is, round-trips through dict, and bind() covers every key."""
    pipeline = Pipeline.load(pipeline_data())
    assert Pipeline.load(pipeline.to_dict()).content_hash == pipeline.content_hash
    bind(FakeServices()).check(pipeline)
