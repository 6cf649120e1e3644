"""Loading the shipped pipeline, optionally with every duration scaled.

Design decision: demos and tests need the real workflow with shorter waits, so time
scaling is a transform of the *data* before validation — it multiplies timeouts,
retry delays and rate-limit windows and touches nothing else. The scaled pipeline has
the same steps, dependencies and conditions as the shipped one (tests check this), so
what a test proves about the schedule holds for the real definition.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml

from stepflow import Pipeline, RetryPolicy

__all__ = ["PIPELINE_NAME", "load_pipeline", "pipeline_data", "scale_durations"]

PIPELINE_NAME = "restaurant_registration"
_RETRY_DURATIONS = ("initial_delay", "max_delay", "jitter")


def pipeline_data() -> dict[str, Any]:
    """The shipped definition as a plain dict, exactly as written in the YAML file."""
    text = resources.files(__package__).joinpath("registration.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def scale_durations(data: dict[str, Any], time_scale: float) -> dict[str, Any]:
    """A copy of ``data`` with timeouts, retry waits and rate-limit windows multiplied."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    scaled = copy.deepcopy(data)
    defaults = RetryPolicy()
    for step in scaled.get("steps", []):
        # A step's retry policy is the default for its sub-steps, so it is always made
        # explicit before scaling; otherwise an unscaled default would slip through.
        step["retry"] = {
            **{name: getattr(defaults, name) for name in _RETRY_DURATIONS},
            **step.get("retry", {}),
        }
        for part in (step, *step.get("substeps", [])):
            _scale_part(part, time_scale)
    return scaled


def _scale_part(part: dict[str, Any], time_scale: float) -> None:
    if part.get("timeout") is not None:
        part["timeout"] = part["timeout"] * time_scale
    retry = part.get("retry")
    if retry:
        for name in _RETRY_DURATIONS:
            if retry.get(name) is not None:
                retry[name] = retry[name] * time_scale
    limit = part.get("rate_limit")
    if limit and limit.get("per_seconds") is not None:
        limit["per_seconds"] = limit["per_seconds"] * time_scale


def load_pipeline(*, time_scale: float = 1.0) -> Pipeline:
    """The registration pipeline; ``time_scale`` < 1 shortens every duration in it."""
    data = pipeline_data()
    if time_scale != 1.0:
        data = scale_durations(data, time_scale)
    return Pipeline.load(data)
