"""Quickstart: a four-step lead pipeline run with the async Orchestrator.

Run it with:  .venv/bin/python examples/quickstart/quickstart_async.py
"""

import anyio
from pydantic import BaseModel

from stepflow import HandlerContext, Handlers, Orchestrator, Pipeline, Snapshot

# 1. Define the pipeline as data (YAML here; a dict works the same way).
PIPELINE_YAML = """
name: leads
version: "1"
steps:
  - key: scan
    name: Category page scan
    handler: scan_page
    expands: true
  - key: enrich
    name: Store page enrichment
    handler: enrich_store
    advance: manual
  - key: choose
    name: Company selection
    type: action_required
    action: choose_company
  - key: register
    name: Registration
    handler: register
    concurrency: 2
    retry: {max_attempts: 3, initial_delay: 0.1}
"""
pipeline = Pipeline.from_yaml(PIPELINE_YAML)
# The same definition as a dict: to_dict() gives it, Pipeline.load() reads it back.
assert Pipeline.load(pipeline.to_dict()).content_hash == pipeline.content_hash
same_as_dict = Pipeline.load(
    {
        "name": "leads",
        "version": "1",
        "steps": [
            {"key": "scan", "name": "Category page scan", "handler": "scan_page", "expands": True},
            {
                "key": "enrich",
                "name": "Store page enrichment",
                "handler": "enrich_store",
                "advance": "manual",
            },
            {
                "key": "choose",
                "name": "Company selection",
                "type": "action_required",
                "action": "choose_company",
            },
            {
                "key": "register",
                "name": "Registration",
                "handler": "register",
                "concurrency": 2,
                "retry": {"max_attempts": 3, "initial_delay": 0.1},
            },
        ],
    }
)
assert same_as_dict.content_hash == pipeline.content_hash

# 2. Bind the handler keys and the action key to code.
handlers = Handlers()


@handlers.handler("scan_page")
async def scan_page(ctx: HandlerContext) -> dict:
    # An expanding step turns its input item into the items it emits.
    for name in ctx.data["stores"]:
        ctx.emit(name, {"name": name})
    return {"found": len(ctx.data["stores"])}


@handlers.handler("enrich_store")
def enrich_store(ctx: HandlerContext) -> dict:
    # A plain (non-async) function: stepflow runs it in a worker thread.
    return {"rating": len(ctx.data["name"])}


class ChooseCompany(BaseModel):
    company: str | None  # None means "no match"


handlers.action("choose_company", ChooseCompany)


@handlers.handler("register")
async def register(ctx: HandlerContext) -> dict:
    company = ctx.outputs["choose"]["company"]
    if company is None:
        ctx.skip("no company chosen")
    # ctx.idempotency_key is the same on every attempt: pass it to the service.
    return {"account": f"acct-{ctx.item_key}", "company": company}


def show(snap: Snapshot) -> None:
    print(f"job {snap.job.status}  version={snap.version}  poll_after={snap.poll_after}")
    for step in snap.steps:
        counts = {status.value: n for status, n in step.counts.items()}
        print(f"  {step.key:<9} {step.status.value:<16} {counts}")
    print("  actions:", [(a.action, a.step, a.count) for a in snap.actions])


async def main() -> None:
    # 3. Open an orchestrator (in-memory storage by default) and create a job.
    async with Orchestrator(handlers=handlers, pipelines=[pipeline]) as orch:
        job = await orch.create_job(
            "leads",
            [{"key": "page-1", "data": {"stores": ["Anna", "Bistro", "Cafe Luna"]}}],
            metadata={"city": "Lyon"},
        )
        print("created", job.pipeline, "v" + job.version, job.status.value)

        # 4. Wait until nothing runs: "enrich" holds processed items for a person.
        show(await orch.wait(job.id))

        # 5. List the items at a step, two per page.
        page = await orch.list_items(job.id, "enrich", limit=2)
        items = list(page.items)
        while page.next_cursor is not None:
            page = await orch.list_items(job.id, "enrich", limit=2, cursor=page.next_cursor)
            items += page.items
        ids = {item.key: item.id for item in items}
        for item in items:
            print(f"  item {item.key:<9} {item.status.value} output={item.output}")

        # 6. A person passes two items on and discards the third.
        await orch.pass_items(job.id, "enrich", [ids["Anna"], ids["Bistro"]])
        await orch.discard_items(job.id, "enrich", [ids["Cafe Luna"]])
        show(await orch.wait(job.id))

        # 7. A person submits a payload per item. The action id makes a repeat harmless.
        payloads = {ids["Anna"]: {"company": "Anna SARL"}, ids["Bistro"]: {"company": None}}
        first = await orch.submit(job.id, "choose", payloads, actor="alice", action_id="ui-42")
        again = await orch.submit(job.id, "choose", payloads, actor="alice", action_id="ui-42")
        print("submit affected", len(first.affected), "items; repeat duplicate =", again.duplicate)

        # 8. Watch the job's status events until it is final, then read the snapshot.
        async for event in orch.watch(job.id, after=first.version):
            if event.type == "job.status":
                print("watch: job", event.data["from"], "->", event.data["to"])
        show(await orch.snapshot(job.id))
        events = await orch.events(job.id)
        print("events:", len(events), "first:", events[0].type, "last:", events[-1].type)
        actions = [e.data["action"] for e in events if e.type == "action"]
        print("actions in the log:", actions)


anyio.run(main)
