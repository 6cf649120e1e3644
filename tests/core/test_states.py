"""The transition tables and the pure status derivations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepflow import InvalidTransition, ItemStatus, JobStatus, StepStatus
from stepflow._commit import _changed_step_statuses, step_statuses
from stepflow._records import JobRecord, StepInfo
from stepflow._states import (
    ITEM_TRANSITIONS,
    JOB_TRANSITIONS,
    STEP_OPEN,
    SUBSTEP_TRANSITIONS,
    check_transition,
    derive_job_status,
    derive_step_status,
    has_open,
)

I, S, J = ItemStatus, StepStatus, JobStatus


@pytest.mark.parametrize(
    ("machine", "table"),
    [("job", JOB_TRANSITIONS), ("item", ITEM_TRANSITIONS), ("substep", SUBSTEP_TRANSITIONS)],
)
def test_every_pair_is_allowed_exactly_when_in_the_table(machine: str, table: dict) -> None:  # type: ignore[type-arg]
    """check_transition accepts the table's pairs and refuses every other pair."""
    for from_, allowed in table.items():
        for to in table:
            if to in allowed:
                check_transition(machine, from_, to, explicit=True)
            else:
                with pytest.raises(InvalidTransition) as caught:
                    check_transition(machine, from_, to, explicit=True)
                assert (caught.value.from_, caught.value.to) == (from_, to)


def test_finished_job_reopens_only_explicitly() -> None:
    """completed -> in_progress needs an explicit retry; cancelled never changes."""
    with pytest.raises(InvalidTransition, match="reopens only by retry"):
        check_transition("job", J.COMPLETED, J.IN_PROGRESS)
    check_transition("job", J.COMPLETED, J.IN_PROGRESS, explicit=True)
    with pytest.raises(InvalidTransition, match="final"):
        check_transition("job", J.CANCELLED, J.IN_PROGRESS, explicit=True)


def test_final_item_statuses_have_no_way_out() -> None:
    """passed, skipped and cancelled visits are final."""
    for status in (I.PASSED, I.SKIPPED, I.CANCELLED):
        assert ITEM_TRANSITIONS[status] == frozenset()


@pytest.mark.parametrize(
    ("counts", "started", "upstream", "expected"),
    [
        ({}, True, True, S.PENDING),
        ({}, True, False, S.SKIPPED),
        ({I.PROCESSING: 1, I.AWAITING_INPUT: 3}, True, False, S.IN_PROGRESS),
        ({I.AVAILABLE: 2}, True, False, S.IN_PROGRESS),
        ({I.AVAILABLE: 2}, False, False, S.ACTION_REQUIRED),
        ({I.RETRYING: 1, I.PASSED: 4}, True, False, S.RETRYING),
        ({I.AWAITING_INPUT: 1, I.PASSED: 4}, True, False, S.ACTION_REQUIRED),
        ({I.PROCESSED: 1}, True, False, S.ACTION_REQUIRED),
        ({I.PASSED: 3, I.FAILED: 2}, True, True, S.COMPLETED),
        ({I.SKIPPED: 3}, True, False, S.COMPLETED),
        ({I.FAILED: 2, I.CANCELLED: 1}, True, False, S.FAILED),
        ({I.CANCELLED: 2}, True, False, S.SKIPPED),
    ],
)
def test_step_status_is_derived_from_counts(
    counts: dict[ItemStatus, int], started: bool, upstream: bool, expected: StepStatus
) -> None:
    """derive_step_status follows the documented table."""
    assert derive_step_status(counts, started=started, upstream_open=upstream) is expected


def test_job_status_is_derived_from_counts() -> None:
    """Completed needs a finisher, failed has none, pending stays until work starts."""
    untouched = [{I.AVAILABLE: 3}, {}]
    assert derive_job_status(J.PENDING, untouched) is J.PENDING
    assert derive_job_status(J.IN_PROGRESS, untouched) is J.IN_PROGRESS
    assert derive_job_status(J.PENDING, [{I.PROCESSING: 1, I.AVAILABLE: 2}, {}]) is J.IN_PROGRESS
    assert derive_job_status(J.IN_PROGRESS, [{I.PASSED: 2, I.FAILED: 1}, {I.PASSED: 2}]) is (
        J.COMPLETED
    )
    assert derive_job_status(J.IN_PROGRESS, [{I.FAILED: 3}, {}]) is J.FAILED
    assert derive_job_status(J.IN_PROGRESS, [{I.PASSED: 1}, {I.SKIPPED: 1}]) is J.COMPLETED
    for kept in (J.DRAFT, J.PAUSED, J.CANCELLED):
        assert derive_job_status(kept, [{I.PASSED: 1}]) is kept


_step_counts = st.dictionaries(st.sampled_from(list(ItemStatus)), st.integers(0, 3), max_size=4)


@st.composite
def _derivation_cases(draw: st.DrawFn) -> tuple[Any, ...]:
    steps = tuple(StepInfo(f"s{n}", draw(st.booleans()), 1) for n in range(draw(st.integers(1, 5))))
    job = JobRecord(
        "job", "p", "1", "h", {}, steps, J.IN_PROGRESS, draw(st.booleans()), {}, None, "t", 0, 0
    )
    keys = [info.key for info in steps]
    before = {key: draw(_step_counts) for key in keys}
    moved = {
        key: {**before[key], **draw(_step_counts.filter(bool))}
        for key in draw(st.sets(st.sampled_from(keys)))
    }
    started = frozenset(draw(st.sets(st.sampled_from(keys))))
    started_after = frozenset(draw(st.sets(st.sampled_from(keys))))
    return job, before, moved, started, started_after


@settings(max_examples=500)
@given(_derivation_cases())
def test_rederiving_only_what_can_change_matches_deriving_everything(
    case: tuple[Any, ...],
) -> None:
    """Re-deriving only moved, flipped and upstream-decided steps gives the full derivation."""
    job, before, moved, started, started_after = case
    stored = step_statuses(job, before, started)
    after = {**before, **moved}
    full = step_statuses(job, after, started_after)
    changed, any_open = _changed_step_statuses(job, before, moved, stored, started, started_after)
    assert changed == {key: s for key, s in full.items() if s is not stored[key]}
    assert any_open == any(has_open(counts) for counts in after.values())
    assert all((status in STEP_OPEN) == has_open(after[key]) for key, status in full.items())
    per_step = [after[info.key] for info in job.steps]
    for current in J:
        assert derive_job_status(current, per_step, any_open) is derive_job_status(
            current, per_step
        )
