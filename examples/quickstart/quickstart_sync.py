"""Quickstart, synchronous: the same verbs without await, for Flask, Django or scripts.

Run it with:  .venv/bin/python examples/quickstart/quickstart_sync.py
"""

from typing import Any

from pydantic import BaseModel

from stepflow import (
    ActionContext,
    ActionRejected,
    HandlerContext,
    Handlers,
    Pipeline,
    SyncOrchestrator,
)

# The pipeline as a plain dict (the same shape as the YAML form).
pipeline = Pipeline.load(
    {
        "name": "contacts",
        "steps": [
            {
                "key": "search",
                "name": "Contact details search",
                "handler": "search_register",
                "action": "search_terms",  # what a person submits when the search finds nothing
            },
            {
                "key": "select",
                "name": "Company selection",
                "type": "action_required",
                "action": "select_company",
            },
        ],
    }
)

REGISTER = {"Pizza Roma": ["Roma SRL", "Roma Foods"], "Chez Nous SAS": ["Chez Nous SAS"]}
handlers = Handlers()


@handlers.handler("search_register")
def search_register(ctx: HandlerContext) -> dict[str, Any]:
    # On the first run ctx.input is None; after a person submits terms it holds them.
    name = ctx.input["name"] if ctx.input else ctx.data["name"]
    candidates = REGISTER.get(name, [])
    if not candidates:
        ctx.ask_person(f"no company found for {name!r}")
    return {"candidates": candidates}


class SearchTerms(BaseModel):
    name: str


class SelectCompany(BaseModel):
    company: str


def company_is_a_candidate(payload: SelectCompany, ctx: ActionContext) -> None:
    if payload.company not in ctx.outputs["search"]["candidates"]:
        raise ValueError(f"{payload.company!r} is not one of the candidates")


handlers.action("search_terms", SearchTerms)
handlers.action("select_company", SelectCompany, company_is_a_candidate)


def snapshot_response(orch: SyncOrchestrator, job_id: str, if_none_match: str | None):
    """What a GET /jobs/<id> view returns: 304 when nothing changed since the ETag."""
    snap = orch.snapshot(job_id)
    etag = f'"{snap.version}"'
    if if_none_match == etag:
        return 304, None, etag
    return 200, snap.model_dump(mode="json"), etag


with SyncOrchestrator(handlers=handlers, pipelines=[pipeline]) as orch:
    job = orch.create_job(
        "contacts",
        [
            {"key": "r1", "data": {"name": "Pizza Roma"}},
            {"key": "r2", "data": {"name": "Chez Nous"}},
        ],
    )
    snap = orch.wait(job.id)
    print({s.key: s.status.value for s in snap.steps})

    waiting = orch.list_items(job.id, "search", status="awaiting_input").items
    print("waiting at search:", [(i.key, i.reason) for i in waiting])
    orch.submit(job.id, "search", {waiting[0].id: {"name": "Chez Nous SAS"}}, actor="bob")
    orch.wait(job.id)

    at_select = orch.list_items(job.id, "select").items
    ids = {item.key: item.id for item in at_select}
    try:
        orch.submit(job.id, "select", {ids["r1"]: {"company": "Nope Ltd"}}, actor="bob")
    except ActionRejected as exc:
        print("rejected:", exc.problems[ids["r1"]])

    status, body, etag = snapshot_response(orch, job.id, None)
    print("GET ->", status, "etag", etag, "job", body["job"]["status"])
    print("GET again ->", snapshot_response(orch, job.id, etag)[0])

    orch.submit(
        job.id,
        "select",
        {ids["r1"]: {"company": "Roma SRL"}, ids["r2"]: {"company": "Chez Nous SAS"}},
        actor="bob",
    )
    final = orch.wait(job.id)
    print("final:", final.job.status.value, final.totals)
