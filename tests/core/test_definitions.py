"""Pipeline definitions: loading, dumping, hashing and every rejected input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepflow import BindingError, DefinitionError, Handlers, Pipeline


def base(**step: Any) -> dict[str, Any]:
    return {"name": "p", "steps": [{"key": "a", "handler": "h", **step}]}


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        Pipeline.load(data)
    return caught.value.problems


GOOD = {
    "name": "orders",
    "version": "2",
    "steps": [
        {"key": "fetch", "handler": "fetch", "retry": {"max_attempts": 5}},
        {"key": "review", "type": "action_required", "action": "decision"},
        {
            "key": "ship",
            "run_if": ["outputs.review.approved"],
            "substeps": [
                {"key": "label", "phase": 1},
                {"key": "pickup", "depends_on": ["label"], "blocking": True, "phase": 2},
            ],
        },
    ],
}


def test_load_from_dict_json_and_yaml_gives_equal_pipelines() -> None:
    """The same definition loads identically from a dict, JSON text and YAML text."""
    from_dict = Pipeline.load(GOOD)
    assert Pipeline.from_json(json.dumps(GOOD)) == from_dict
    assert Pipeline.from_yaml(from_dict.to_yaml()) == from_dict
    assert from_dict.step("ship").substep("pickup").depends_on == ("label",)


def test_dump_round_trips_and_hash_is_stable() -> None:
    """to_dict/load round-trips, and the content hash depends only on the content."""
    pipeline = Pipeline.load(GOOD)
    again = Pipeline.load(pipeline.to_dict())
    assert again == pipeline
    assert again.content_hash == pipeline.content_hash
    changed = Pipeline.load({**GOOD, "version": "3"})
    assert changed.content_hash != pipeline.content_hash


def test_from_file_reads_by_extension(tmp_path: Any) -> None:
    """from_file loads .yaml and .json files and refuses other extensions."""
    pipeline = Pipeline.load(GOOD)
    (tmp_path / "p.yaml").write_text(pipeline.to_yaml())
    (tmp_path / "p.json").write_text(pipeline.to_json())
    (tmp_path / "p.txt").write_text("x")
    assert Pipeline.from_file(tmp_path / "p.yaml") == pipeline
    assert Pipeline.from_file(tmp_path / "p.json") == pipeline
    with pytest.raises(DefinitionError):
        Pipeline.from_file(tmp_path / "p.txt")


def test_duplicate_step_keys_are_rejected_with_their_path() -> None:
    """Two steps with one key are refused, naming the second one's path."""
    data = {"name": "p", "steps": [{"key": "a", "handler": "h"}, {"key": "a", "handler": "h"}]}
    assert problems(data)[0][0] == "steps[1].key"


def test_duplicate_substep_keys_are_rejected() -> None:
    """Two sub-steps with one key in a step are refused with their path."""
    data = {"name": "p", "steps": [{"key": "a", "substeps": [{"key": "x"}, {"key": "x"}]}]}
    assert ("steps[0].substeps[1].key", "duplicate sub-step key 'x'") in problems(data)


def test_unknown_dependency_is_rejected() -> None:
    """A depends_on naming no sub-step of the step is refused at that index."""
    data = {"name": "p", "steps": [{"key": "a", "substeps": [{"key": "x", "depends_on": ["y"]}]}]}
    assert problems(data) == [("steps[0].substeps[0].depends_on[0]", "unknown sub-step 'y'")]


def test_dependency_cycle_is_rejected() -> None:
    """A cycle among sub-steps is refused and the message shows the cycle."""
    data = {
        "name": "p",
        "steps": [
            {
                "key": "a",
                "substeps": [
                    {"key": "x", "depends_on": ["z"]},
                    {"key": "y", "depends_on": ["x"]},
                    {"key": "z", "depends_on": ["y"]},
                ],
            }
        ],
    }
    [(path, message)] = problems(data)
    assert path == "steps[0].substeps"
    assert message.startswith("dependency cycle:")


def test_action_required_needs_a_schema_or_manual_pass() -> None:
    """An action_required step with neither an action nor advance: manual is refused."""
    data = {"name": "p", "steps": [{"key": "a", "type": "action_required"}]}
    assert problems(data)[0][0] == "steps[0]"
    Pipeline.load(
        {"name": "p", "steps": [{"key": "a", "type": "action_required", "advance": "manual"}]}
    )


def test_automatic_step_needs_work() -> None:
    """An automatic step with no handler and no sub-steps is refused."""
    assert problems({"name": "p", "steps": [{"key": "a"}]})[0][0] == "steps[0]"


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("concurrency", 0, "steps[0].concurrency"),
        ("concurrency", -3, "steps[0].concurrency"),
        ("timeout", 0, "steps[0].timeout"),
        ("retry", {"max_attempts": 0}, "steps[0].retry.max_attempts"),
        ("retry", {"initial_delay": -1}, "steps[0].retry.initial_delay"),
        ("rate_limit", {"calls": 0, "per_seconds": 60}, "steps[0].rate_limit.calls"),
        ("rate_limit", {"calls": 1, "per_seconds": 0}, "steps[0].rate_limit.per_seconds"),
    ],
)
def test_zero_or_negative_limits_are_rejected(field: str, value: Any, path: str) -> None:
    """Every limit must be positive; the error names the field's path."""
    assert problems(base(**{field: value}))[0][0] == path


def test_unknown_step_type_and_extra_fields_are_rejected() -> None:
    """An unknown step type and an unknown field are both refused by path."""
    assert problems(base(type="sometimes"))[0][0] == "steps[0].type"
    assert problems(base(colour="blue"))[0][0] == "steps[0].colour"
    assert problems({**base(), "owner": "x"})[0][0] == "owner"


@pytest.mark.parametrize("key", ["has space", "tab\there", "nl\n", "", "k" * 129, "émoji✓"])
def test_keys_outside_the_pattern_are_rejected(key: str) -> None:
    """Keys allow letters, digits, _ - . only, 1 to 128 characters."""
    assert problems(base(key=key))[0][0] == "steps[0].key"


def test_longest_allowed_key_loads() -> None:
    """A 128-character key of allowed characters is accepted."""
    assert Pipeline.load(base(key="a.b-c_" + "k" * 122)).steps[0].key.startswith("a.b-c_")


def test_condition_paths_must_point_somewhere() -> None:
    """run_if paths must start at a known root and name earlier steps or sibling sub-steps."""
    bad_root = base(run_if=["config.x"])
    assert problems(bad_root)[0][0] == "steps[0].run_if[0].path"
    later = {
        "name": "p",
        "steps": [
            {"key": "a", "handler": "h", "run_if": ["outputs.b.x"]},
            {"key": "b", "handler": "h"},
        ],
    }
    assert problems(later)[0][0] == "steps[0].run_if[0].path"
    sub = {
        "name": "p",
        "steps": [{"key": "a", "substeps": [{"key": "x", "run_if": ["substeps.nope.id"]}]}],
    }
    assert problems(sub)[0][0] == "steps[0].substeps[0].run_if[0].path"


def test_bad_json_and_yaml_text_are_definition_errors() -> None:
    """Unparseable text and non-mapping documents raise DefinitionError, not a parser error."""
    with pytest.raises(DefinitionError):
        Pipeline.from_json("{")
    with pytest.raises(DefinitionError):
        Pipeline.from_yaml("- a\n- b\n")
    with pytest.raises(DefinitionError):
        Pipeline.from_yaml("key: [unclosed")


def test_binding_reports_every_missing_key() -> None:
    """Handlers.check names each unbound handler and action key."""
    handlers = Handlers()
    handlers.add("fetch", lambda ctx: None)
    with pytest.raises(BindingError) as caught:
        handlers.check(Pipeline.load(GOOD))
    assert caught.value.missing == ["action decision", "handler label", "handler pickup"]


def test_definitions_are_frozen() -> None:
    """A loaded pipeline cannot be changed in place."""
    pipeline = Pipeline.load(GOOD)
    with pytest.raises(ValueError, match="frozen"):
        pipeline.steps[0].concurrency = 9  # type: ignore[misc]


def test_dependents_are_found_transitively() -> None:
    """Step.dependents follows depends_on in reverse, through several levels."""
    step = Pipeline.load(
        {
            "name": "p",
            "steps": [
                {
                    "key": "a",
                    "substeps": [
                        {"key": "x"},
                        {"key": "y", "depends_on": ["x"]},
                        {"key": "z", "depends_on": ["y"]},
                        {"key": "w"},
                    ],
                }
            ],
        }
    ).steps[0]
    assert step.dependents("x") == ["y", "z"]
    assert step.dependents("w") == []
