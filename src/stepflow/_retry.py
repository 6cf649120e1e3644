"""When a failed attempt runs again, computed with tenacity's wait strategies.

Design decision: the retry policy is data (:class:`~stepflow.RetryPolicy`) and the
attempt count and next attempt time are stored on the visit, so a retry survives a
restart. This module only turns (policy, failure, attempt) into a delay, with
tenacity's exponential and random waits rather than home-made arithmetic; a
``retry_after`` from the service wins over the policy's wait.
"""

from __future__ import annotations

from functools import lru_cache

from tenacity import RetryCallState, wait_exponential, wait_random
from tenacity.wait import wait_base

from ._definitions import RetryPolicy
from ._handlers import Failure

__all__ = ["retry_delay"]


@lru_cache(maxsize=256)
def _wait_for(policy: RetryPolicy) -> wait_base:
    wait: wait_base = wait_exponential(
        multiplier=policy.initial_delay, exp_base=policy.multiplier, max=policy.max_delay
    )
    if policy.jitter:
        wait = wait + wait_random(0, policy.jitter)
    return wait


def retry_delay(policy: RetryPolicy, failure: Failure, attempt: int) -> float | None:
    """Seconds until the next attempt after ``attempt`` failed, or ``None`` to give up."""
    if failure.kind not in policy.retry_on or attempt >= policy.max_attempts:
        return None
    if failure.retry_after is not None:
        return max(0.0, float(failure.retry_after))
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(_wait_for(policy)(state))
