"""Mapping stepflow's errors to HTTP statuses, and seeing each one raised.

Run it with:  .venv/bin/python examples/quickstart/errors_http.py
"""

import anyio
from pydantic import BaseModel

from stepflow import (
    ActionRejected,
    Conflict,
    DefinitionError,
    Handlers,
    InvalidInput,
    NotFound,
    Orchestrator,
    PermanentError,
    PermissionDenied,
    Pipeline,
    RateLimited,
    StepflowError,
)


def http_status(exc: StepflowError) -> int:
    """The status a web host returns for a stepflow error (most specific first)."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PermissionDenied):
        return 403
    if isinstance(exc, Conflict):  # includes InvalidTransition, StaleWrite, DuplicateAction
        return 409
    if isinstance(exc, InvalidInput):  # includes DefinitionError, BindingError,
        return 422  # LimitExceeded and ActionRejected
    return 500


handlers = Handlers()


@handlers.handler("lookup")
async def lookup(ctx):
    if ctx.data.get("bad"):
        raise PermanentError("no such company number")  # never retried
    if ctx.attempt == 1:
        raise RateLimited("429 from the register", retry_after=0.05)  # waits 0.05 s
    return {"ok": True}


class Pick(BaseModel):
    company: str


handlers.action("pick", Pick)
pipeline = Pipeline.load(
    {
        "name": "errors",
        "steps": [
            {"key": "lookup", "handler": "lookup"},
            {"key": "pick", "type": "action_required", "action": "pick"},
        ],
    }
)


async def main() -> None:
    try:
        Pipeline.load({"name": "broken", "steps": [{"key": "a"}]})
    except DefinitionError as exc:
        print(http_status(exc), type(exc).__name__, exc.problems)

    def only_alice(request):
        return request.actor.id == "alice"

    async with Orchestrator(handlers=handlers, pipelines=[pipeline], authorize=only_alice) as orch:
        job = await orch.create_job(
            "errors", [{"key": "good"}, {"key": "bad", "data": {"bad": True}}], actor="alice"
        )
        await orch.wait(job.id)
        for item in (await orch.list_items(job.id, "lookup")).items:
            print(f"{item.key}: {item.status.value}, attempts={item.attempts}, error={item.error}")
        good = (await orch.list_items(job.id, "pick")).items[0].id

        attempts = [
            lambda: orch.get_job("no-such-job"),
            lambda: orch.cancel_job(job.id, actor="mallory"),
            lambda: orch.submit(job.id, "pick", {good: {"company": 42}}, actor="alice"),
            lambda: orch.start_job(job.id, actor="alice"),
            lambda: orch.list_items(job.id, "pick", limit=5000),
        ]
        for attempt in attempts:
            try:
                await attempt()
            except StepflowError as exc:
                text = str(exc).replace(job.id, "<job>").replace(good, "<item>")
                print(http_status(exc), type(exc).__name__ + ":", text)
                if isinstance(exc, ActionRejected):
                    print("    problems:", {"<item>": exc.problems[good]})


anyio.run(main)
